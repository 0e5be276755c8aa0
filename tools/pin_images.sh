#!/usr/bin/env bash
# Pins the Dockerfile's base images by digest. They are named once each, in the
# `ARG *_IMAGE=name:tag` lines before its first FROM; for each, this looks up the digest
# its tag names now and rewrites the line as `name:tag@sha256:DIGEST` (a line already
# pinned gets its tag's current digest). The Dockerfile refuses to build until every base
# is pinned, so a build never takes whatever a tag has moved to.
#
#   tools/pin_images.sh      # after changing a tag, or to take a rebuilt base (security fixes)
#
# Then review the diff, build, and commit the Dockerfile. Needs the registries and `crane`
# (go-containerregistry) or `docker buildx`. The digest is the tag's own: for a
# multi-platform image, its index, so every platform stays pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKERFILE=${DOCKERFILE:-Dockerfile}

digest() {
  if command -v crane > /dev/null; then
    crane digest "$1"
  elif docker buildx version > /dev/null 2>&1; then
    docker buildx imagetools inspect --format '{{json .Manifest}}' "$1" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])'
  else
    echo "tools/pin_images.sh: needs crane or docker buildx to look up digests" >&2
    return 1
  fi
}

names=$(sed -n '/^FROM /q; s/^ARG \([A-Z0-9_]*_IMAGE\)=.*/\1/p' "$DOCKERFILE")
if [ -z "$names" ]; then
  echo "tools/pin_images.sh: no ARG *_IMAGE=... before the first FROM in $DOCKERFILE" >&2
  exit 1
fi
pinned=$(mktemp)
trap 'rm -f "$pinned"' EXIT
cp "$DOCKERFILE" "$pinned"
for name in $names; do
  value=$(sed -n "s/^ARG $name=//p" "$pinned")
  ref=${value%%@*}
  case "${ref##*/}" in
    *:*) ;;
    *) echo "tools/pin_images.sh: $name=$value names no tag (name:tag)" >&2; exit 1 ;;
  esac
  sha=$(digest "$ref")
  if ! [[ "$sha" =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "tools/pin_images.sh: no digest for $ref (got '$sha')" >&2
    exit 1
  fi
  sed -i.bak "s|^ARG $name=.*|ARG $name=$ref@$sha|" "$pinned" && rm -f "$pinned.bak"
  echo "$name=$ref@$sha"
done
cat "$pinned" > "$DOCKERFILE"
