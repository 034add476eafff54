#!/usr/bin/env bash
# Tags a release: reads the version from include/kvevict/version.hpp as committed at HEAD (the
# header CMake's project() and the installed kvevictConfigVersion.cmake take it from) and
# creates the annotated tag vMAJOR.MINOR.PATCH on HEAD. Refuses when the working tree has
# changes or untracked files (the tag must name exactly what was tested) and when the tag exists
# already (bump the version first). Pushes nothing.
#
#   tools/release-tag.sh            create the tag
#   tools/release-tag.sh --dry-run  print the tag it would create, create nothing
#
# Tested by tests/packaging/release_tag.sh (CTest packaging.release_tag) in a scratch repository.
set -euo pipefail

dry_run=0
case "${1-}" in
  "") ;;
  -n | --dry-run) dry_run=1 ;;
  *)
    echo "usage: $0 [--dry-run]" >&2
    exit 2
    ;;
esac

cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
header=include/kvevict/version.hpp

if [ -n "$(git status --porcelain)" ]; then
  echo "release-tag: the working tree is not clean; commit or stash first:" >&2
  git status --short >&2
  exit 1
fi

text=$(git show "HEAD:$header")
version=""
for part in MAJOR MINOR PATCH; do
  number=$(sed -nE "s/^#define KVEVICT_VERSION_${part} +([0-9]+) *\$/\1/p" <<<"$text")
  if ! [[ $number =~ ^[0-9]+$ ]]; then
    echo "release-tag: $header: expected one line '#define KVEVICT_VERSION_$part <number>'" >&2
    exit 1
  fi
  version=${version:+$version.}$number
done
tag=v$version

if git rev-parse -q --verify "refs/tags/$tag" >/dev/null; then
  echo "release-tag: $tag exists already (on $(git rev-parse --short "$tag^{commit}")); bump" \
       "the version in $header first" >&2
  exit 1
fi

if ((dry_run)); then
  echo "$tag"
  exit 0
fi
git tag -a "$tag" -m "kvevict $version"
echo "release-tag: created $tag on $(git rev-parse --short HEAD); publish it with: git push origin $tag"
