/* Unit tests for redact_secrets: no password survives, nothing else changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redact.h"

static int failures;

static void expect(const char *in, const char *want) {
    size_t n;
    char *got = redact_secrets(in, strlen(in), &n);
    if (!got || strcmp(got, want) != 0 || n != strlen(want)) {
        fprintf(stderr, "FAIL\n  in:   %s\n  want: %s\n  got:  %s\n", in, want,
                got ? got : "(null)");
        failures++;
    }
    free(got);
}

int main(void) {
    expect("postgres://app:s3cret@db1:5432/app", "postgres://app:***@db1:5432/app");
    expect("postgresql://app@db1/app", "postgresql://app@db1/app");
    expect("postgres://db1/app?sslmode=require&password=s3cret&x=1",
           "postgres://db1/app?sslmode=require&password=***&x=1");
    expect("postgres://u:p%40ss@h/d", "postgres://u:***@h/d");
    expect("postgres://u:p@ss@h/d", "postgres://u:***@h/d");
    expect("host=db1 user=app password=s3cret dbname=app",
           "host=db1 user=app password=*** dbname=app");
    expect("host=db1 password = 's3 cr\\'et' dbname=app", "host=db1 password = *** dbname=app");
    expect("PASSWORD=abc", "PASSWORD=***");
    expect("PGPASSWORD=abc psql", "PGPASSWORD=*** psql");
    expect("sslpassword=abc", "sslpassword=***");
    expect("cannot connect to \"postgres://a:b@h/d\": refused",
           "cannot connect to \"postgres://a:***@h/d\": refused");
    expect("password=", "password=");
    expect("the password is wrong", "the password is wrong");
    expect("", "");
    expect("://", "://");
    expect("x://:@", "x://:***@");
    if (failures) {
        fprintf(stderr, "%d failed\n", failures);
        return 1;
    }
    printf("redact: all passed\n");
    return 0;
}
