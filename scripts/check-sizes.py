#!/usr/bin/env python3
"""Size limits of the Rust sources: no file over 800 lines, no function over 120 lines.

    check-sizes.py [--all] [--max-file N] [--max-fn N] [PATH]...

Walks PATH (files or folders; src/ by default, relative to the repository root) for `*.rs` files.
A function starts on a line matching `^\\s*(pub(\\(crate\\)|\\(super\\))?\\s+)?(async\\s+)?(unsafe\\s+)?fn
NAME` and ends on the line where the brace depth returns to the depth it had before the `fn`;
braces in string, raw-string, byte-string and char literals and in `//` and `/* */` comments are
not counted. A `fn` whose signature ends in `;` before any `{` (a trait method without a body) is
not a function here. Nested functions are measured on their own and also count toward the
function around them.

Prints `path:line fn name: N lines` for each function over the limit and `path: N lines` for each
file over the limit, and exits 1 if there is any; with --all it prints every file and every
function it measured (the ones over a limit marked `OVER`), with the same exit status.
"""

import argparse
import os
import re
import sys

FN_RE = re.compile(
    r"^\s*(pub(\(crate\)|\(super\))?\s+)?(async\s+)?(unsafe\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)"
)

CODE, LINE_COMMENT, BLOCK_COMMENT, STRING, RAW_STRING = range(5)


def scan(text):
    """Yield (line_index, column, char) for each `{`, `}`, `(`, `)`, `[`, `]` and `;` in code.

    Also returns, through the `code_at_line_start` list, whether each line starts in code (not
    inside a string or block comment), so a `fn` inside a string is not taken for a function.
    """
    events = []
    line_starts_in_code = []
    state = CODE
    block_depth = 0
    raw_hashes = 0
    i = 0
    line = 0
    n = len(text)
    line_starts_in_code.append(True)
    while i < n:
        c = text[i]
        if c == "\n":
            if state == LINE_COMMENT:
                state = CODE
            line += 1
            line_starts_in_code.append(state == CODE)
            i += 1
            continue
        if state == CODE:
            if c == "/" and text.startswith("//", i):
                state = LINE_COMMENT
                i += 2
                continue
            if c == "/" and text.startswith("/*", i):
                state = BLOCK_COMMENT
                block_depth = 1
                i += 2
                continue
            # Raw strings: r"..", r#".."#, br"..", br#".."# (not part of an identifier).
            m = re.compile(r'b?r(#*)"').match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                raw_hashes = len(m.group(1))
                state = RAW_STRING
                i = m.end()
                continue
            if c == '"':
                state = STRING
                i += 1
                continue
            if c == "'":
                # A char literal ('x', '\n', '\'', '\u{..}', 'é') or a lifetime/label ('a).
                if text.startswith("\\", i + 1):
                    j = text.find("'", i + 3 if text[i + 2 : i + 3] == "'" else i + 2)
                    if j != -1 and j - i <= 12:
                        i = j + 1
                        continue
                elif i + 2 < n and text[i + 2] == "'" and text[i + 1] != "\n":
                    i += 3
                    continue
                i += 1
                continue
            if c in "{}()[];":
                events.append((line, c))
            i += 1
            continue
        if state == LINE_COMMENT:
            i += 1
            continue
        if state == BLOCK_COMMENT:
            if text.startswith("/*", i):
                block_depth += 1
                i += 2
            elif text.startswith("*/", i):
                block_depth -= 1
                i += 2
                if block_depth == 0:
                    state = CODE
            else:
                i += 1
            continue
        if state == STRING:
            if c == "\\":
                # Skip the escaped character, unless it is the newline of a line continuation
                # (the newline must still be counted).
                i += 1 if text[i + 1 : i + 2] == "\n" else 2
                continue
            if c == '"':
                state = CODE
            i += 1
            continue
        if state == RAW_STRING:
            if c == '"' and text.startswith("#" * raw_hashes, i + 1):
                state = CODE
                i += 1 + raw_hashes
                continue
            i += 1
            continue
    return events, line_starts_in_code


def measure(path):
    """(line count, [(start line, name, length)]) of one file; lines are 1-based."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    events, starts_in_code = scan(text)

    # Brace depth at the start of each line, and the events of each line in order.
    per_line = [[] for _ in range(len(lines) + 1)]
    for line, c in events:
        per_line[line].append(c)

    functions = []
    depth_at = []
    depth = 0
    for idx in range(len(lines)):
        depth_at.append(depth)
        for c in per_line[idx]:
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1

    for idx, text_line in enumerate(lines):
        m = FN_RE.match(text_line)
        if not m or not starts_in_code[idx]:
            continue
        name = m.group(5)
        start_depth = depth_at[idx]
        depth = start_depth
        nesting = 0  # () and [] in the signature, so `[u8; 4]` is not the end of a declaration
        opened = False
        end = None
        for j in range(idx, len(lines)):
            for c in per_line[j]:
                if c in "([":
                    nesting += 1
                elif c in ")]":
                    nesting -= 1
                elif c == ";" and not opened and nesting == 0 and depth == start_depth:
                    end = -1  # a declaration without a body
                    break
                elif c == "{":
                    depth += 1
                    opened = True
                elif c == "}":
                    depth -= 1
                    if opened and depth == start_depth:
                        end = j
                        break
            if end is not None:
                break
        if end is None or end < 0:
            continue
        functions.append((idx + 1, name, end - idx + 1))
    return len(lines), functions


def rust_files(paths):
    for root in paths:
        if os.path.isfile(root):
            yield root
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".rs"):
                    yield os.path.join(dirpath, name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="files or folders (default: src/)")
    parser.add_argument("--all", action="store_true", help="list every file and function")
    parser.add_argument("--max-file", type=int, default=800, help="most lines a file may have")
    parser.add_argument("--max-fn", type=int, default=120, help="most lines a function may have")
    args = parser.parse_args()

    paths = args.paths
    if not paths:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [os.path.relpath(os.path.join(repo, "src"))]

    over = 0
    for path in rust_files(paths):
        count, functions = measure(path)
        if count > args.max_file:
            over += 1
            print(f"{path}: {count} lines" + (" OVER" if args.all else ""))
        elif args.all:
            print(f"{path}: {count} lines")
        for line, name, length in functions:
            if length > args.max_fn:
                over += 1
                print(f"{path}:{line} fn {name}: {length} lines" + (" OVER" if args.all else ""))
            elif args.all:
                print(f"{path}:{line} fn {name}: {length} lines")
    if over:
        print(
            f"{over} over the limits (files > {args.max_file} lines, functions > {args.max_fn} lines)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
