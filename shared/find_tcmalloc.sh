#!/usr/bin/env bash
# Prints the path of tcmalloc's shared library (libtcmalloc_minimal.so.4, Debian/Ubuntu's
# libtcmalloc-minimal4, Fedora's gperftools-libs) when the machine has one, and nothing otherwise.
# run_demo.sh preloads it for training: glibc's malloc returns the pages of each step's activations to the
# kernel and faults them in again in the next step, which tcmalloc does not
# (RESULTS.md: "make demo twice, with tcmalloc" and "Trial 17's schedule at demo scale, and jemalloc").
#   lib=$(shared/find_tcmalloc.sh); [ -n "$lib" ] && LD_PRELOAD=$lib python train.py ...
for lib in $(ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 /{print $NF}') \
           /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 \
           /usr/lib64/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4; do
  if [ -e "$lib" ]; then echo "$lib"; exit 0; fi
done
exit 0
