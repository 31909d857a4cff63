#!/usr/bin/env bash
# Turn a directory holding only Cargo.toml (and Cargo.lock) into a buildable dummy crate: an
# empty file for every target the manifest declares or cargo would infer (lib, bins, examples,
# benches, tests). The Dockerfile builds the dependencies against this dummy, so that layer is
# cached on Cargo.toml + Cargo.lock alone; cargo refuses a manifest whose declared targets have
# no file, hence the stubs beyond src/main.rs.
#
#   scripts/stub-crate.sh [DIR]      (default: the current directory)
set -euo pipefail
dir="${1:-.}"
manifest="$dir/Cargo.toml"
[ -f "$manifest" ] || { echo "stub-crate: no $manifest" >&2; exit 2; }

# One "KIND NAME PATH" line per target table ([lib], [[bin]], [[example]], [[bench]], [[test]]);
# PATH is "-" when the manifest leaves it to cargo's defaults.
targets="$(awk '
  function flush() { if (kind != "") print kind, (name == "" ? "-" : name), (path == "" ? "-" : path) }
  function value(line) { sub(/^[^=]*=[ \t]*/, "", line); sub(/[ \t]*(#.*)?$/, "", line); gsub(/"/, "", line); return line }
  /^[ \t]*\[/ {
    flush(); kind = ""; name = ""; path = ""
    if ($0 ~ /^[ \t]*\[package\]/)        kind = "package"
    else if ($0 ~ /^[ \t]*\[lib\]/)       kind = "lib"
    else if ($0 ~ /^[ \t]*\[\[bin\]\]/)     kind = "bin"
    else if ($0 ~ /^[ \t]*\[\[example\]\]/) kind = "example"
    else if ($0 ~ /^[ \t]*\[\[bench\]\]/)   kind = "bench"
    else if ($0 ~ /^[ \t]*\[\[test\]\]/)    kind = "test"
    next
  }
  kind != "" && /^[ \t]*name[ \t]*=/ { name = value($0) }
  kind != "" && /^[ \t]*path[ \t]*=/ { path = value($0) }
  END { flush() }
' "$manifest")"

stub() { # stub PATH CONTENT
  mkdir -p "$(dirname "$dir/$1")"
  [ -e "$dir/$1" ] || printf '%s\n' "$2" > "$dir/$1"
}

package="$(awk '$1 == "package" {print $2}' <<<"$targets")"

# What cargo infers without any table: src/lib.rs and src/main.rs (the real crate has both).
stub src/lib.rs ''
stub src/main.rs 'fn main() {}'
while read -r kind name path; do
  [ -n "$kind" ] && [ "$kind" != package ] || continue
  if [ "$path" = "-" ]; then
    case "$kind" in
      lib) path=src/lib.rs ;;
      # A bin named like the package is src/main.rs (a second candidate would be ambiguous).
      bin) if [ "$name" = "$package" ]; then path=src/main.rs; else path="src/bin/$name.rs"; fi ;;
      example) path="examples/$name.rs" ;;
      bench) path="benches/$name.rs" ;;
      test) path="tests/$name.rs" ;;
    esac
  fi
  case "$kind" in
    lib) stub "$path" '' ;;
    *) stub "$path" 'fn main() {}' ;;
  esac
done <<<"$targets"
