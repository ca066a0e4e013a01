#include <stddef.h>

/* greet writes a greeting for name (the world when NULL) into buf. */
const char *greet(char *buf, size_t n, const char *name);
