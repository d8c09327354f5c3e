"""Exit 0 only if a pytest JUnit XML report ran at least one test and none failed, errored or skipped.

    python3 scripts/junit_ok.py REPORT.xml

The GPU check (scripts/gpu_check.sh) uses it: on a GPU machine a skipped `gpu` test means something
is missing (CuPy, a device, PyTorch for a parity test), and a check that passes on skips proves nothing.
"""
import sys
import xml.etree.ElementTree as ET


def summary(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    s = summary(argv[0])
    ok = s["tests"] > 0 and s["failures"] == s["errors"] == s["skipped"] == 0
    print(f"{'OK' if ok else 'FAIL'}: {s['tests']} tests, {s['failures']} failed, {s['errors']} errors, "
          f"{s['skipped']} skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
