// libfuse 3 (Debian's libfuse3-dev), API level 3.1: only CFuseGlue includes it.
#define FUSE_USE_VERSION 31
#include <fuse.h>
