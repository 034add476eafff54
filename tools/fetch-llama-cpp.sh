#!/usr/bin/env bash
# Produces a llama.cpp source tree at the commit kvevict's integration is built and tested against,
# and prints its path. Cached: a second call only prints the path.
#
#   tools/fetch-llama-cpp.sh [DIR]        # default DIR: ${KVEVICT_CACHE:-~/.cache/kvevict}
#
# Source: the npm package node-llama-cpp@3.21.1 carries llama.cpp as a git bundle
# (llama/gitRelease.bundle, commit 80fb11ac73e66d89eae2c6a91d8a77428fa733ed, 2026-09-12); `npm pack`
# fetches it from the npm registry, `git clone` unpacks it. Nothing of llama.cpp is committed to
# kvevict. Needs npm, tar and git.
set -euo pipefail
package="node-llama-cpp@3.21.1"
commit="80fb11ac73e66d89eae2c6a91d8a77428fa733ed"
cache="${1:-${KVEVICT_CACHE:-$HOME/.cache/kvevict}}"
tree="$cache/llama.cpp-${commit:0:8}"

if [ -f "$tree/.kvevict-complete" ]; then
  echo "$tree"
  exit 0
fi
for tool in npm tar git; do
  command -v "$tool" >/dev/null || {
    echo "fetch-llama-cpp: $tool: expected on PATH (Debian: apt-get install npm tar git)" >&2
    exit 1
  }
done
mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "$package" --silent >/dev/null)
tar -xzf "$work"/node-llama-cpp-*.tgz -C "$work" package/llama/gitRelease.bundle
rm -rf "$tree"
git clone --quiet "$work/package/llama/gitRelease.bundle" "$tree" 2>/dev/null
git -C "$tree" -c advice.detachedHead=false checkout --quiet "$commit"
got=$(git -C "$tree" rev-parse HEAD)
if [ "$got" != "$commit" ]; then
  echo "fetch-llama-cpp: $tree: expected commit $commit, got $got" >&2
  exit 1
fi
touch "$tree/.kvevict-complete"
echo "$tree"
