#!/usr/bin/python3
"""Validates JSON documents, one per line of FILE, against a schema in docs/json/.

Usage: validate-json.py SCHEMA FILE. Exits 1 naming each line that does not validate.
The specs run it on everything moonshift prints as JSON, so docs and output cannot drift.
"""
import json
import sys

import jsonschema


def main():
    schema_path, docs_path = sys.argv[1], sys.argv[2]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema)
    failed = 0
    with open(docs_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            for err in validator.iter_errors(doc):
                failed += 1
                where = "/".join(str(p) for p in err.absolute_path) or "(top)"
                print(f"{docs_path}:{n}: {where}: {err.message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
