#include <stdio.h>

#include "greet.h"

const char *greet(char *buf, size_t n, const char *name) {
	snprintf(buf, n, "Hello, %s!", name ? name : "World");
	return buf;
}
