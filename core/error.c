/* Messages without allocating: one line to stderr, and the error line that
 * precedes an abort on heap misuse. */
#include "internal.h"

#include <stdlib.h>

size_t ta_fmt_u64(char *buf, uint64_t v) {
  char tmp[24];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
  return n;
}

/* "trimalloc: " a b c d e, on one line. */
void ta_say(const char *a, const char *b, const char *c, const char *d, const char *e) {
  char line[512];
  size_t len = 0;
  const char *parts[] = {"trimalloc: ", a, b, c, d, e, "\n"};
  for (size_t k = 0; k < 7; k++)
    for (const char *s = parts[k]; *s && len < sizeof line; s++) line[len++] = *s;
  ta_prim_write_err(line, len);
}

/* One line, `trimalloc: error: <what> 0x...`, then abort (as glibc does):
 * carrying on after heap misuse corrupts data silently. */
void ta_error(const char *what, const void *p) {
  char line[256], hex[19] = "0x";
  uintptr_t v = (uintptr_t)p;
  int digits = 1;
  while (digits < 16 && (v >> (4 * digits))) digits++;
  for (int i = 0; i < digits; i++) hex[2 + i] = "0123456789abcdef"[(v >> (4 * (digits - 1 - i))) & 15];
  hex[2 + digits] = 0;
  size_t len = 0;
  const char *parts[] = {"trimalloc: error: ", what, " ", hex, "\n"};
  for (size_t k = 0; k < 5; k++)
    for (const char *s = parts[k]; *s && len < sizeof line; s++) line[len++] = *s;
  ta_prim_write_err(line, len);
  abort();
}
