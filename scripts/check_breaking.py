#!/usr/bin/env python3
"""Fails when protos/ changed in a way that breaks a caller, compared with main.

Runs ``buf breaking`` with the rules of protos/buf.yaml (WIRE_JSON, and no RPC or service
deleted) against the protos of a git revision, taken with ``git archive``, so it works the
same in a clone, a worktree or CI. The revision: ``--against`` or $BUF_BREAKING_AGAINST;
else ``main`` on a branch (what merging it would change), and main's previous commit on
main itself (what its last commit or merge changed, plus any edit not committed yet).

One finding of buf's is checked further instead of taken as is: a field whose message type
moved to another package ("changed type from coach.router.v1.Usage to coach.type.v1.Usage")
is reported by FIELD_WIRE_JSON_COMPATIBLE_TYPE by name alone. Such a field breaks nobody when
the new message has the same shape as the old one: the same field numbers, names, JSON names,
labels and types, nested messages and enums alike (their value numbers and names). Moves of
that kind are accepted and listed; any other finding fails the check.

Skipped, with a line saying so, when there is no git repository or no such revision.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[1]
MOVED = re.compile(r'changed type from "(?P<old>[\w.]+)" to "(?P<new>[\w.]+)"')
Types = dict[str, descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto]


def _types(image: Path) -> Types:
    """Every message and enum of a descriptor set, by full name (no leading dot)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())
    found: Types = {}

    def messages(prefix: str, protos: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in protos:
            name = f"{prefix}.{message.name}"
            found[name] = message
            messages(name, list(message.nested_type))
            for enum in message.enum_type:
                found[f"{name}.{enum.name}"] = enum

    for file in files.file:
        messages(file.package, list(file.message_type))
        for enum in file.enum_type:
            found[f"{file.package}.{enum.name}"] = enum
    return found


def same_shape(old: Types, old_name: str, new: Types, new_name: str,
               seen: set[tuple[str, str]] | None = None) -> bool:
    """Whether two messages (or enums) encode alike on the wire and in JSON."""
    seen = set() if seen is None else seen
    if (old_name, new_name) in seen:
        return True
    seen.add((old_name, new_name))
    a, b = old.get(old_name), new.get(new_name)
    if isinstance(a, descriptor_pb2.EnumDescriptorProto) and isinstance(
            b, descriptor_pb2.EnumDescriptorProto):
        return {(v.number, v.name) for v in a.value} == {(v.number, v.name) for v in b.value}
    if not (isinstance(a, descriptor_pb2.DescriptorProto)
            and isinstance(b, descriptor_pb2.DescriptorProto)):
        return False
    fields_a = {f.number: f for f in a.field}
    fields_b = {f.number: f for f in b.field}
    if fields_a.keys() != fields_b.keys():
        return False
    for number, fa in fields_a.items():
        fb = fields_b[number]
        if (fa.name, fa.json_name, fa.label, fa.type, fa.proto3_optional) != (
                fb.name, fb.json_name, fb.label, fb.type, fb.proto3_optional):
            return False
        if fa.type_name and not same_shape(old, fa.type_name.lstrip("."), new,
                                           fb.type_name.lstrip("."), seen):
            return False
    return True


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, cwd=REPO, text=True, capture_output=True)


def _commit(revision: str) -> str:
    found = _run(["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"])
    return found.stdout.strip() if found.returncode == 0 else ""


def _previous_main() -> str:
    """``main``, or its previous commit when this is main."""
    head, main = _commit("HEAD"), _commit("main")
    return "main^" if main and head == main and _commit("main^") else "main"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default=os.environ.get("BUF_BREAKING_AGAINST", ""),
                        help="git revision to compare with (default: main, or main^ on main)")
    parser.add_argument("--buf", default=str(REPO / ".tools/node_modules/.bin/buf"))
    options = parser.parse_args()
    against = options.against or _previous_main()

    if not _commit(against):
        print(f"buf breaking: SKIPPED: no git revision {against!r} to compare with")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "archive", against, "protos"], check=False, cwd=REPO,
                                 capture_output=True)
        if archive.returncode:
            print(f"buf breaking: SKIPPED: {against} has no protos/")
            return 0
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        old_protos = base / "protos"
        result = _run([options.buf, "breaking", "protos", "--against", str(old_protos),
                       "--error-format", "json"])
        if result.returncode not in (0, 100):  # 100: findings; anything else: buf failed
            sys.stderr.write(result.stderr or result.stdout)
            return 1
        findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        if not findings:
            print(f"buf breaking: protos/ compatible with {against} (wire and JSON)")
            return 0
        images = {}
        for name, source in (("old", old_protos), ("new", REPO / "protos")):
            images[name] = base / f"{name}.binpb"
            built = _run([options.buf, "build", str(source), "--as-file-descriptor-set",
                          "-o", str(images[name])])
            if built.returncode:
                sys.stderr.write(built.stderr)
                return 1
        old, new = _types(images["old"]), _types(images["new"])
        moved, breaking = [], []
        for finding in findings:
            match = MOVED.search(finding.get("message", ""))
            if (finding.get("type") == "FIELD_WIRE_JSON_COMPATIBLE_TYPE" and match
                    and same_shape(old, match["old"], new, match["new"])):
                moved.append(finding)
            else:
                breaking.append(finding)
    for finding in moved:
        print(f"buf breaking: accepted, same shape: {finding['path']}: {finding['message']}")
    for finding in breaking:
        print(f"{finding.get('path')}:{finding.get('start_line')}:"
              f"{finding.get('start_column')}: {finding.get('message')} ({finding.get('type')})",
              file=sys.stderr)
    if breaking:
        print(f"buf breaking: {len(breaking)} change(s) break callers of {against}'s protos "
              "(wire or JSON); keep field numbers, names and types, or add a new field",
              file=sys.stderr)
        return 1
    print(f"buf breaking: protos/ compatible with {against} (wire and JSON; "
          f"{len(moved)} field(s) moved to a message of the same shape)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
