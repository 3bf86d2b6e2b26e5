"""Parse an OpenMetrics exposition (stdin) with the Prometheus project's own parser and print
its families and samples as JSON: {"families": [{"name", "type"}], "samples": [{"name",
"labels", "value", "family", "type"}]}. Exits non-zero, with the
parser's error, on anything the format does not allow. Run by tests/it/metrics.rs."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    samples = []
    families = []
    for family in text_string_to_metric_families(text):
        families.append({"name": family.name, "type": family.type})
        for sample in family.samples:
            samples.append(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }
            )
    json.dump({"families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()
