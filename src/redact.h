/* Hides passwords in connection strings and any text that may quote one. */
#ifndef MOONSHIFT_REDACT_H
#define MOONSHIFT_REDACT_H
#include <stddef.h>

/* Returns a malloc'd copy of in[0..len) with every password replaced by "***":
 * the password of a URI's userinfo (scheme://user:secret@host) and the value of any
 * "password=" keyword (also sslpassword=, PGPASSWORD=, quoted or not, and in a URI
 * query). Redacts too much rather than too little. NULL when out of memory. */
char *redact_secrets(const char *in, size_t len, size_t *out_len);

#endif
