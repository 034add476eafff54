// What an engine does first: wrap its memory, pick a policy, compact.
#include <kvevict/kvevict.hpp>

#include <string_view>
#include <vector>

#ifdef KVEVICT_PACKAGE_VERSION  // find_package's version, given by tests/packaging/find_package
#define CONSUMER_STR(x) #x
#define CONSUMER_VERSION(major, minor, patch) \
  CONSUMER_STR(major) "." CONSUMER_STR(minor) "." CONSUMER_STR(patch)
static_assert(std::string_view(KVEVICT_PACKAGE_VERSION) == CONSUMER_VERSION(KVEVICT_VERSION_MAJOR,
                                                                            KVEVICT_VERSION_MINOR,
                                                                            KVEVICT_VERSION_PATCH),
              "kvevictConfigVersion.cmake and include/kvevict/version.hpp disagree");
#endif

int main() {
  std::vector<Eigen::half> k(2 * 8 * 4), v(2 * 8 * 4), q(2 * 1 * 4);
  using S = kvevict::Storage<Eigen::half>;
  const kvevict::KVCache<Eigen::half> kv(S::hnd(k.data(), 8, 4), S::hnd(v.data(), 8, 4),
                                         {.kv_heads = 2, .tokens = 8, .head_dim = 4});
  const kvevict::QueryWindow<Eigen::half> queries(q.data(), 2, 1, 4);
  kvevict::Selection keep;
  kvevict::Workspace ws;
  kvevict::StreamingLLM({.sinks = 2}).select(kv, queries, kvevict::Budget::tokens(4), keep, ws);
  const auto result = kvevict::compact(kv, keep);
  return result.lengths[0] == 4 ? 0 : 1;
}
