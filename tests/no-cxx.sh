#!/bin/sh
# Stands in for the C++ header test when configure found no working C++ compiler.
echo "SKIP: no working C++ compiler at configure time; the header was not compiled as C++"
exit 77
