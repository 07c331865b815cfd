"""Add up JUnit XML files from several pytest runs into one closing summary line.

Exits 1 when any test failed or errored, or when no test ran at all.
"""

import sys
import xml.etree.ElementTree as ET


def main(paths: list[str]) -> int:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            print(f"missing or unreadable test report {path}: {exc}")
            return 1
        for suite in root.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
    passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    failed = totals["failures"] + totals["errors"]
    print(f"total: {passed} passed, {failed} failed, {totals['skipped']} skipped")
    if totals["tests"] == 0:
        print("no tests ran")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
