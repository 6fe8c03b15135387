#!/bin/sh
# Stands in for the Check test programs when configure found no Check.
echo "SKIP: Check (>= 0.11) was not found at configure time; the Check test programs were not built"
exit 77
