#!/usr/bin/env python3
"""Every command in the docs runs as written.

Runs each ```sh / ```bash / ```shell block of README.md and docs/**/*.md with
`bash -euo pipefail` in the repository root, and the `$ ` commands of each ```console block
(there the output shown must appear in the real output; the exit status is not checked,
since a console block may show an error). PATH starts with a directory holding
`sidekey-proxy` and `sidekey-controller` from target/debug (what `make install` puts on
PATH), then .tools/bin (helm and kubectl from `make setup`).

A block that cannot run offline (a cluster, Azure, a browser, a server that runs until
stopped, installing things) is skipped only when the line right before its fence is

    <!-- docs-test: skip (the reason) -->

Skipped blocks are listed with their reason. A marker without a reason, or one that is not
right before a runnable block, is an error.

Second check: every inline code span of docs/troubleshooting.md and docs/authpolicy.md
that reads like a message (three words or more; not a command, no `=`, URL or <placeholder>)
must be the text of a string literal in proxy/src or controller/src. The literal's
`{placeholders}` stand for one token of the doc's example values (any text at the end,
where an error may wrap another message, itself looked up from its start); `...` in the
doc elides part of the message; the literal text must make up two thirds of the quote, or
three words and a third. So a changed or truncated message fails, but what the doc shows
in place of a placeholder is not checked.

Usage: tests/docs/shell_blocks.py [FILE.md ...]   (default: README.md and docs/**/*.md;
files given explicitly get both checks). DOCS_TEST_TIMEOUT: seconds per block (120).
"""

import functools
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = float(os.environ.get("DOCS_TEST_TIMEOUT", "120"))
RUN_LANGS = {"sh", "bash", "shell"}
MESSAGE_DOCS = ["docs/troubleshooting.md", "docs/authpolicy.md"]
SOURCE_DIRS = ["proxy/src", "controller/src"]
COMMANDS = {"kubectl", "helm", "az", "sidekey-controller", "sidekey-proxy", "curl", "wget",
            "openssl", "cargo", "make", "docker", "git", "npm", "node", "python3", "bash"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)[^`]*$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->$")


def rel(path):
    r = os.path.relpath(path, ROOT)
    return path if r.startswith("..") else r


def blocks(path):
    """(line, lang, text, skip reason or None, marker error or None) per fenced block."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, i, markers = [], 0, set()
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if "<!--" in lines[i] and "docs-test" in lines[i]:
                markers.add(i)
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start, body, i = i, [], i + 1
        close = re.compile(r"^\s*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        while i < len(lines) and not close.match(lines[i]):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        reason, error = None, None
        if prev >= 0 and "docs-test" in lines[prev]:
            markers.discard(prev)
            mm = MARKER.match(lines[prev].strip())
            if mm and mm.group(1).strip():
                reason = mm.group(1).strip()
            else:
                error = f"malformed marker {lines[prev].strip()!r}: write <!-- docs-test: skip (the reason) -->"
        out.append((start + 1, lang, "\n".join(body) + "\n", reason, error))
    for k in sorted(markers):
        out.append((k + 1, "", "", None, "a docs-test marker that is not right before a fenced block"))
    return out


def console_commands(text):
    """[(command, [expected output lines])] of a console block's `$ ` lines."""
    cmds, current = [], None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd += "\n" + lines[i]
            current = (cmd, [])
            cmds.append(current)
        elif current is not None and line.strip():
            current[1].append(line)
        i += 1
    return cmds


def squeeze(s):
    return " ".join(s.split())


def run(script, env, timeout):
    """(exit status or None on timeout, combined output)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    try:
        p = subprocess.Popen(["bash", "-euo", "pipefail", f.name], cwd=ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
            return p.returncode, out.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            return None, out.decode("utf-8", "replace")
    finally:
        os.unlink(f.name)


def installed_path(tmp):
    """A PATH like after `make install` (from target/debug) plus .tools/bin."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bindir = os.path.join(tmp, "bin")
    os.mkdir(bindir)
    for name in ("sidekey-proxy", "sidekey-controller"):
        binary = os.path.join(target, "debug", name)
        if not os.access(binary, os.X_OK):
            sys.exit(f"docs test: {rel(binary)} is missing: cargo build -p sidekey-proxy -p sidekey-controller")
        os.symlink(binary, os.path.join(bindir, name))
    return os.pathsep.join([bindir, os.path.join(ROOT, ".tools", "bin"), os.environ.get("PATH", "")])


def check_blocks(files, env):
    skipped, ran, failures = [], 0, []
    for path in files:
        for line, lang, text, reason, error in blocks(path):
            where = f"{rel(path)}:{line}"
            runnable = lang in RUN_LANGS or (lang == "console" and console_commands(text))
            if error:
                failures.append((where, error, ""))
                continue
            if reason is not None:
                if runnable:
                    skipped.append((where, reason))
                else:
                    failures.append((where, f"a skip marker before a ```{lang} block, which is never run", ""))
                continue
            if not runnable:
                continue
            ran += 1
            if lang != "console":
                status, out = run(text, env, TIMEOUT)
                if status != 0:
                    why = f"timed out after {TIMEOUT:g} s" if status is None else f"exit status {status}"
                    failures.append((where, why, out))
                else:
                    print(f"ok    {where}")
                continue
            problems, outputs = [], []
            for cmd, expected in console_commands(text):
                # `$ ` lines run one by one; the block shows their output, not their status.
                status, out = run("set +e\n" + cmd + "\n", env, TIMEOUT)
                outputs.append(f"$ {cmd}\n{out}")
                if status is None:
                    problems.append(f"`{cmd}` timed out after {TIMEOUT:g} s")
                    continue
                actual = "\n".join(squeeze(x) for x in out.splitlines())
                problems += [f"`{cmd}` did not print: {x.strip()}" for x in expected if squeeze(x) not in actual]
            if problems:
                failures.append((where, "; ".join(problems), "".join(outputs)))
            else:
                print(f"ok    {where}")
    return skipped, ran, failures


# --- messages quoted in the docs against the source's string literals ---------------------

def rust_strings(text):
    """The string literals of a Rust file, unescaped (comments and char literals skipped)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            start = i + 2 + len(hashes)
            end = text.find('"' + hashes, start)
            end = n if end < 0 else end
            out.append(text[start:end])
            i = end + 1 + len(hashes)
        elif c == "'":
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'])'", text[i:])
            i += len(m.group(0)) if m else 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    e = text[j + 1]
                    if e == "\n":
                        j += 2
                        while j < n and text[j] in " \t\n":
                            j += 1
                        continue
                    m = re.match(r"u\{([0-9a-fA-F]+)\}", text[j + 1:])
                    if m:
                        buf.append(chr(int(m.group(1), 16)))
                        j += 2 + len(m.group(0)) - 1
                        continue
                    buf.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(e, e))
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            i += 1
    return out


@functools.lru_cache(maxsize=None)
def TEMPLATES():
    """Each string literal as its literal pieces between `{...}` format placeholders (and,
    when it has braces, once more whole: not every literal is a format string)."""
    out = []
    for d in SOURCE_DIRS:
        for path in sorted(glob.glob(os.path.join(ROOT, d, "**", "*.rs"), recursive=True)):
            for s in rust_strings(open(path, encoding="utf-8").read()):
                if len(s) < 8 or " " not in s:
                    continue
                if "{" in s:
                    out.append(([s], s.lower()))
                t = s.replace("{{", "\x01").replace("}}", "\x02")
                pieces = [p.replace("\x01", "{").replace("\x02", "}") for p in re.split(r"\{[^{}]*\}", t)]
                out.append((pieces, " ".join(pieces).lower()))
    return tuple(out)


def bounded(s, k):
    """Whether a cut at position k of s falls between words, not inside one."""
    return k in (0, len(s)) or not (s[k - 1].isalnum() and s[k].isalnum())


def words(texts):
    return sum(1 for t in texts for w in t.split() if any(c.isalnum() for c in w))


def stretches(fragment, pieces, anchored):
    """Ways fragment is a stretch (cut at word boundaries) of an instantiation of the
    pieces, the holes between them standing for any text: (literal texts, trailing hole
    text or None). anchored: the stretch starts where the string starts."""
    n = len(fragment)
    for p in pieces[:1] if anchored else pieces:
        i = p.find(fragment)
        while i >= 0 and not anchored:
            if bounded(p, i) and bounded(p, i + n):
                yield [fragment], None
                break
            i = p.find(fragment, i + 1)
        if anchored and i == 0 and bounded(p, n):
            yield [fragment], None
    for a in range(1 if anchored else len(pieces) - 1):
        head = pieces[a]
        starts = [head[k:] for k in range(len(head) + 1)
                  if bounded(head, k) and not (anchored and k) and fragment.startswith(head[k:])]
        for b in range(a + 1, len(pieces)):
            mids = pieces[a + 1:b]
            if not all(m in fragment for m in mids):
                continue
            tail = pieces[b]
            ends = [tail[:k] for k in range(len(tail), -1, -1) if bounded(tail, k) and fragment.endswith(tail[:k])]
            for first in sorted(starts, key=len, reverse=True):
                for last in ends:
                    # Each hole as short as it can be (the next piece at its first place),
                    # and one token at most, but for a hole the stretch ends in.
                    pos, literals, holes = len(first), [first], []
                    for m in mids:
                        j = fragment.find(m, pos)
                        if j < 0 or any(c.isspace() for c in fragment[pos:j]):
                            break
                        holes.append(fragment[pos:j])
                        literals.append(m)
                        pos = j + len(m)
                    else:
                        hole = fragment[pos:n - len(last)]
                        if pos <= n - len(last) and (last == "" or not any(c.isspace() for c in hole)):
                            literals.append(last)
                            yield literals, (hole if last == "" and hole else None)
                            break
                else:
                    continue
                break


@functools.lru_cache(maxsize=None)
def score(fragment, anchored=False, depth=0):
    """(literal words, literal characters) of the best reading of fragment as source text;
    a trailing hole may hold another string from its start (an error wrapping another)."""
    keys = {w for w in re.findall(r"[a-z0-9]{4,}", fragment.lower())}
    if not keys:
        return None
    best = None
    for pieces, joined in TEMPLATES():
        if not any(k in joined for k in keys):
            continue
        for literals, tail in stretches(fragment, pieces, anchored):
            w, c = words(literals), sum(len(x) for x in literals)
            if w == 0:
                continue
            if len(literals) == 1 and tail is None and literals[0] == fragment:
                return (w, c)
            if tail is not None and depth < 2:
                sub = score(tail.strip(), True, depth + 1)
                if sub:
                    w, c = w + sub[0], c + sub[1]
            if best is None or (w, c) > best:
                best = (w, c)
    return best


def quoted_ok(fragment):
    """Literal text of one source string (or one wrapping another): two thirds of its
    characters, or three words and a third of its characters; the rest stands in for
    placeholders."""
    s = score(fragment)
    return s is not None and (3 * s[1] >= 2 * len(fragment) or (s[0] >= 3 and 3 * s[1] >= len(fragment)))


def looks_like_message(span):
    words = [w for w in re.split(r"\s+", span.replace("...", " ").replace("…", " ")) if w]
    return (len(words) >= 3 and "=" not in span and "://" not in span and not re.search(r"<\w", span)
            and words[0] not in COMMANDS and not words[0].endswith((".sh", ".py"))
            and not span.startswith(("-", "$", "./")))


def code_spans(path):
    """(line, text) of each inline code span outside fenced blocks."""
    out, fenced = [], None
    for number, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        m = FENCE.match(line)
        if m and (fenced is None or m.group(2)[0] == fenced):
            fenced = None if fenced else m.group(2)[0]
            continue
        if fenced:
            continue
        for mm in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", line):
            text = mm.group(2)
            if len(text) > 2 and text.startswith(" ") and text.endswith(" "):
                text = text[1:-1]
            out.append((number, text))
    return out


def check_messages(files):
    checked, failures = 0, []
    for path in files:
        for line, span in code_spans(path):
            if not looks_like_message(span):
                continue
            checked += 1
            fragments = [f.strip() for f in re.split(r"\.\.\.|…", span) if f.strip()]
            if not all(quoted_ok(f) for f in fragments):
                failures.append((f"{rel(path)}:{line}", f"quoted message not in {' or '.join(SOURCE_DIRS)}: {span}", ""))
    return checked, failures


def main():
    args = sys.argv[1:]
    if args:
        files = [os.path.abspath(a) for a in args]
        message_files = files
    else:
        files = [os.path.join(ROOT, "README.md")]
        files += sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
        message_files = [os.path.join(ROOT, f) for f in MESSAGE_DOCS]
    with tempfile.TemporaryDirectory(prefix="sidekey-docs-") as tmp:
        env = dict(os.environ, PATH=installed_path(tmp))
        skipped, ran, failures = check_blocks(files, env)
    checked, message_failures = check_messages(message_files)
    failures += message_failures
    for where, reason in skipped:
        print(f"skip  {where}  ({reason})")
    for where, why, out in failures:
        print(f"FAIL  {where}: {why}")
        for line in out.rstrip().splitlines():
            print(f"      | {line}")
    if failures and not os.access(os.path.join(ROOT, ".tools", "bin", "helm"), os.X_OK):
        print("(helm and kubectl come from `make setup`, into .tools/bin)")
    print(f"docs test: {ran} blocks run, {len(skipped)} skipped, {checked} quoted messages checked, "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
