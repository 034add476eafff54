// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief A small SVG line-plot writer (no dependency): error against budget, one line per
/// policy, readable axes and a legend.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace kvevict::eval {

/// One line of a plot.
struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  ///< (x, y), drawn in x order
};

/// A panel: title, axis labels, series; `log_y` draws y on a log10 scale (non-positive y are
/// skipped there).
struct Panel {
  std::string title, x_label, y_label;
  bool log_y = true;
  bool x_percent = true;  ///< x tick labels as percentages
  std::vector<Series> series;
};

namespace detail {

inline std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&')
      out += "&amp;";
    else if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '"')
      out += "&quot;";
    else
      out += c;
  }
  return out;
}

inline std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

inline std::string tick_label(double v, bool percent) {
  char buf[32];
  if (percent)
    std::snprintf(buf, sizeof buf, "%g%%", v * 100.0);
  else
    std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace detail

/// Renders panels stacked vertically into one SVG document (one `<path>` per series, with the
/// series name in its `data-series` attribute and in the legend). Colours: Okabe–Ito, readable
/// by colour-blind readers, then a dash pattern once they run out.
inline std::string render_svg(const std::vector<Panel>& panels) {
  const double width = 900, panel_h = 420, left = 80, right = 300, top = 40, bottom = 60;
  const double plot_w = width - left - right, plot_h = panel_h - top - bottom;
  static const char* colors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00",
                                 "#56B4E9", "#000000", "#F0E442", "#999999"};
  std::ostringstream svg;
  svg << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\""
      << panel_h * static_cast<double>(panels.size())
      << "\" font-family=\"sans-serif\" font-size=\"13\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (std::size_t pi = 0; pi < panels.size(); ++pi) {
    const Panel& p = panels[pi];
    const double y0 = panel_h * static_cast<double>(pi);
    double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
    std::vector<double> xs;
    for (const Series& s : p.series)
      for (auto [x, y] : s.points) {
        if (p.log_y && !(y > 0)) continue;
        xmin = std::min(xmin, x);
        xmax = std::max(xmax, x);
        ymin = std::min(ymin, y);
        ymax = std::max(ymax, y);
        if (std::find(xs.begin(), xs.end(), x) == xs.end()) xs.push_back(x);
      }
    if (!(xmin <= xmax)) xmin = 0, xmax = 1, ymin = 0.1, ymax = 1;
    if (xmin == xmax)
      xmin -= 0.5 * std::max(1e-9, std::abs(xmin)), xmax += 0.5 * std::max(1e-9, std::abs(xmax));
    double ylo, yhi;
    if (p.log_y) {
      ylo = std::floor(std::log10(ymin));
      yhi = std::ceil(std::log10(ymax));
      if (ylo == yhi) yhi += 1;
    } else {
      ylo = std::min(0.0, ymin);
      yhi = ymax > ylo ? ymax * 1.05 : ylo + 1;
    }
    auto px = [&](double x) { return left + (x - xmin) / (xmax - xmin) * plot_w; };
    auto py = [&](double y) {
      const double v = p.log_y ? std::log10(y) : y;
      return y0 + top + (1.0 - (v - ylo) / (yhi - ylo)) * plot_h;
    };
    svg << "<g class=\"panel\">\n<text x=\"" << left + plot_w / 2 << "\" y=\"" << y0 + 24
        << "\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">"
        << detail::escape(p.title) << "</text>\n";
    // Axes, grid and ticks.
    svg << "<rect x=\"" << left << "\" y=\"" << y0 + top << "\" width=\"" << plot_w
        << "\" height=\"" << plot_h << "\" fill=\"none\" stroke=\"#444\"/>\n";
    std::sort(xs.begin(), xs.end());
    for (double x : xs)
      svg << "<line x1=\"" << detail::number(px(x)) << "\" y1=\"" << y0 + top << "\" x2=\""
          << detail::number(px(x)) << "\" y2=\"" << y0 + top + plot_h
          << "\" stroke=\"#ddd\"/>\n<text x=\"" << detail::number(px(x)) << "\" y=\""
          << y0 + top + plot_h + 18 << "\" text-anchor=\"middle\">"
          << detail::tick_label(x, p.x_percent) << "</text>\n";
    const int steps = p.log_y ? static_cast<int>(yhi - ylo) : 5;
    for (int i = 0; i <= steps; ++i) {
      const double v = p.log_y ? std::pow(10.0, ylo + i) : ylo + (yhi - ylo) * i / steps;
      svg << "<line x1=\"" << left << "\" y1=\"" << detail::number(py(v)) << "\" x2=\""
          << left + plot_w << "\" y2=\"" << detail::number(py(v))
          << "\" stroke=\"#ddd\"/>\n<text x=\"" << left - 6 << "\" y=\""
          << detail::number(py(v) + 4) << "\" text-anchor=\"end\">" << detail::tick_label(v, false)
          << "</text>\n";
    }
    svg << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << y0 + panel_h - 16
        << "\" text-anchor=\"middle\">" << detail::escape(p.x_label) << "</text>\n"
        << "<text transform=\"translate(" << 20 << "," << y0 + top + plot_h / 2
        << ") rotate(-90)\" text-anchor=\"middle\">" << detail::escape(p.y_label) << "</text>\n";
    // One path per series, and the legend.
    for (std::size_t si = 0; si < p.series.size(); ++si) {
      const Series& s = p.series[si];
      auto pts = s.points;
      std::sort(pts.begin(), pts.end());
      std::string d;
      for (auto [x, y] : pts) {
        if (p.log_y && !(y > 0)) continue;
        d += (d.empty() ? "M" : " L") + detail::number(px(x)) + " " + detail::number(py(y));
      }
      const char* color = colors[si % 9];
      const char* dash = si >= 9 ? " stroke-dasharray=\"6 3\"" : "";
      svg << "<path data-series=\"" << detail::escape(s.name) << "\" d=\""
          << (d.empty() ? "M0 0" : d) << "\" fill=\"none\" stroke=\"" << color
          << "\" stroke-width=\"2\"" << dash << "/>\n";
      for (auto [x, y] : pts)
        if (!p.log_y || y > 0)
          svg << "<circle cx=\"" << detail::number(px(x)) << "\" cy=\"" << detail::number(py(y))
              << "\" r=\"3\" fill=\"" << color << "\"/>\n";
      const double ly = y0 + top + 14 + 20 * static_cast<double>(si);
      svg << "<line x1=\"" << left + plot_w + 14 << "\" y1=\"" << ly - 4 << "\" x2=\""
          << left + plot_w + 40 << "\" y2=\"" << ly - 4 << "\" stroke=\"" << color
          << "\" stroke-width=\"2\"" << dash << "/>\n<text x=\"" << left + plot_w + 46 << "\" y=\""
          << ly << "\">" << detail::escape(s.name) << "</text>\n";
    }
    svg << "</g>\n";
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace kvevict::eval
