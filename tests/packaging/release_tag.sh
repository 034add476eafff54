#!/usr/bin/env bash
# packaging.release_tag: tools/release-tag.sh in a scratch repository holding a copy of it and of
# include/kvevict/version.hpp. It must tag v<the version CMake reads> (annotated, on HEAD), and
# refuse a dirty tree, an untracked file and an existing tag without creating anything.
#   release_tag.sh <kvevict source dir> <scratch dir (removed and recreated)> <expected version>
set -euo pipefail
source_dir=$1 work=$2 expected=v$3

# A repository of our own: no user or system git configuration (signing, hooks, templates).
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=kvevict-test GIT_AUTHOR_EMAIL=test@kvevict.invalid
export GIT_COMMITTER_NAME=kvevict-test GIT_COMMITTER_EMAIL=test@kvevict.invalid

fail() {
  echo "release_tag: $*" >&2
  exit 1
}

rm -rf "$work"
mkdir -p "$work/tools" "$work/include/kvevict"
cp "$source_dir/tools/release-tag.sh" "$work/tools/"
cp "$source_dir/include/kvevict/version.hpp" "$work/include/kvevict/"
cd "$work"
git init -q -b main .
git add -A
git commit -q -m "scratch"

tags() { git for-each-ref refs/tags --format='%(refname) %(objectname)'; }

# refuses(<why>, <command>…): the script must say why itself (not leave it to a failing git
# command), exit non-zero, and leave the tags as they were.
refuses() {
  local why=$1 before message
  shift
  before=$(tags)
  if message=$("$@" 2>&1); then fail "succeeded despite $why"; fi
  [[ $message == release-tag:* ]] || fail "no refusal of its own for $why: $message"
  [ "$(tags)" = "$before" ] || fail "changed the tags despite $why"
}

echo untracked >untracked.txt
refuses "an untracked file" tools/release-tag.sh
rm untracked.txt
echo "// edited" >>include/kvevict/version.hpp
refuses "a modified header" tools/release-tag.sh
git checkout -q include/kvevict/version.hpp

[ "$(tools/release-tag.sh --dry-run)" = "$expected" ] || fail "--dry-run did not print $expected"
[ -z "$(git tag -l)" ] || fail "--dry-run created a tag"

tools/release-tag.sh
[ "$(git tag -l)" = "$expected" ] || fail "tags are '$(git tag -l)', expected $expected"
[ "$(git cat-file -t "$expected")" = tag ] || fail "$expected is not an annotated tag"
[ "$(git rev-parse "$expected^{commit}")" = "$(git rev-parse HEAD)" ] || fail "$expected is not on HEAD"

refuses "an existing tag" tools/release-tag.sh
echo "release_tag: ok ($expected)"
