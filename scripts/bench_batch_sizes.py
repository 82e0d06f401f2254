#!/usr/bin/env python3
"""Print how much the writer grouped, from a running `dsevents serve`.

Usage: bench_batch_sizes.py METRICS_URL
Reads the dsevents_writer_batch_size histogram from /metrics and prints
one line: deliveries committed, transactions and the mean per transaction.
"""

import sys
import urllib.request


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench_batch_sizes.py METRICS_URL")
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("dsevents_writer_batch_size_sum", "dsevents_writer_batch_size_count"):
            values[name] = float(value)
    if len(values) != 2:
        sys.exit(f"bench_batch_sizes.py: no dsevents_writer_batch_size histogram at {sys.argv[1]}")
    deliveries = values["dsevents_writer_batch_size_sum"]
    transactions = values["dsevents_writer_batch_size_count"]
    mean = deliveries / transactions if transactions else 0.0
    print(f"writer committed {deliveries:.0f} deliveries in {transactions:.0f} transactions (mean {mean:.1f})")


if __name__ == "__main__":
    main()
