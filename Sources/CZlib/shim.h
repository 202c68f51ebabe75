// zlib from Debian's zlib1g-dev: raw deflate, for qcow2's compressed clusters.
#include <zlib.h>
