#include <stdio.h>
#include <string.h>

#include "greet.h"

static int fails;

static void check(const char *name, const char *got, const char *want) {
	if (strcmp(got, want) != 0) {
		printf("FAIL: %s: got \"%s\", want \"%s\"\n", name, got, want);
		fails++;
	} else {
		printf("PASS: %s\n", name);
	}
}

int main(void) {
	char buf[64];
	check("world", greet(buf, sizeof buf, NULL), "Hello, World!");
	check("named", greet(buf, sizeof buf, "gcc"), "Hello, gcc!");
	return fails != 0;
}
