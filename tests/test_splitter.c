/* Unit tests for the splitter: each psql rule, with the lines and columns it reports. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "splitter.h"

static int failures;

struct want {
    enum split_kind kind;
    const char *text; /* as psql sends it */
    size_t line, column;
};

#define SQL(t, l, c)                                                                               \
    { SPLIT_SQL, t, l, c }
#define COPY(t, l, c)                                                                              \
    { SPLIT_COPY, t, l, c }
#define META(t, l, c)                                                                              \
    { SPLIT_META, t, l, c }
#define END                                                                                        \
    { SPLIT_SQL, NULL, 0, 0 }

static char *stmt_text(const char *in, const struct split_result *r, const struct split_stmt *st) {
    char *buf = malloc(st->len + 1);
    if (!buf)
        abort();
    buf[split_text(in, r, st, buf)] = '\0';
    return buf;
}

/* Splits `in` (len bytes) and compares the statements with `want` (END-terminated). */
static void check_n(int at, const char *in, size_t len, const struct want *want) {
    struct split_result r;
    int rc = split_sql(in, len, &r);
    if (rc != SPLIT_OK) {
        fprintf(stderr, "FAIL (line %d): split error %s at %zu:%zu\n", at,
                rc == SPLIT_EINPUT ? r.error.message : "out of memory", r.error.line,
                r.error.column);
        failures++;
        split_free(&r);
        return;
    }
    size_t n = 0;
    while (want[n].text)
        n++;
    if (r.count != n) {
        fprintf(stderr, "FAIL (line %d): %zu statements, want %zu\n", at, r.count, n);
        for (size_t i = 0; i < r.count; i++) {
            char *t = stmt_text(in, &r, &r.stmts[i]);
            fprintf(stderr, "  got [%d] %s\n", r.stmts[i].kind, t);
            free(t);
        }
        failures++;
    } else {
        for (size_t i = 0; i < n; i++) {
            const struct split_stmt *st = &r.stmts[i];
            char *t = stmt_text(in, &r, st);
            if (st->kind != want[i].kind || strcmp(t, want[i].text) != 0 ||
                st->line != want[i].line || st->column != want[i].column) {
                fprintf(stderr,
                        "FAIL (line %d) statement %zu\n  want [%d] %zu:%zu %s\n  got  [%d] %zu:%zu "
                        "%s\n",
                        at, i + 1, want[i].kind, want[i].line, want[i].column, want[i].text,
                        st->kind, st->line, st->column, t);
                failures++;
            }
            free(t);
        }
    }
    split_free(&r);
}

#define CHECK(in, ...)                                                                             \
    do {                                                                                           \
        static const struct want w_[] = {__VA_ARGS__, END};                                        \
        check_n(__LINE__, in, strlen(in), w_);                                                     \
    } while (0)

static void check_error(int at, const char *in, const char *message, size_t line, size_t column) {
    struct split_result r;
    int rc = split_sql(in, strlen(in), &r);
    if (rc != SPLIT_EINPUT || strcmp(r.error.message, message) != 0 || r.error.line != line ||
        r.error.column != column) {
        fprintf(stderr,
                "FAIL (line %d): want error \"%s\" at %zu:%zu, got rc %d \"%s\" at %zu:%zu\n", at,
                message, line, column, rc, rc == SPLIT_EINPUT ? r.error.message : "", r.error.line,
                r.error.column);
        failures++;
    }
    split_free(&r);
}

#define ERROR(in, msg, l, c) check_error(__LINE__, in, msg, l, c)

/* The COPY statement at index i has this data and terminator. */
static void check_copy(int at, const char *in, size_t i, const char *data, size_t term_len,
                       size_t end_line) {
    struct split_result r;
    int rc = split_sql(in, strlen(in), &r);
    if (rc != SPLIT_OK || i >= r.count || r.stmts[i].kind != SPLIT_COPY ||
        r.stmts[i].data_len != strlen(data) ||
        memcmp(in + r.stmts[i].data_start, data, strlen(data)) != 0 ||
        r.stmts[i].term_len != term_len || r.stmts[i].end_line != end_line) {
        fprintf(stderr, "FAIL (line %d): COPY data of statement %zu\n", at, i + 1);
        failures++;
    }
    split_free(&r);
}

static void strings(void) {
    CHECK("SELECT 'a;b'; SELECT 'it''s;';", SQL("SELECT 'a;b';", 1, 1),
          SQL("SELECT 'it''s;';", 1, 15));
    /* standard_conforming_strings: a backslash in '' is an ordinary character */
    CHECK("SELECT 'C:\\'; SELECT 2;", SQL("SELECT 'C:\\';", 1, 1), SQL("SELECT 2;", 1, 15));
    /* E'' strings: \' does not end them, '' does not either */
    CHECK("SELECT E'\\'; '';'; SELECT 2;", SQL("SELECT E'\\'; '';';", 1, 1),
          SQL("SELECT 2;", 1, 20));
    CHECK("SELECT e'a\\\\'; SELECT 2;", SQL("SELECT e'a\\\\';", 1, 1), SQL("SELECT 2;", 1, 16));
    /* an identifier that ends in e is not an E prefix */
    CHECK("SELECT one'\\'; SELECT 2;", SQL("SELECT one'\\';", 1, 1), SQL("SELECT 2;", 1, 16));
    CHECK("SELECT U&'d\\0061;', u&'x'; SELECT 2;", SQL("SELECT U&'d\\0061;', u&'x';", 1, 1),
          SQL("SELECT 2;", 1, 28));
    CHECK("SELECT B'01', X'AF', N';'; SELECT 2;", SQL("SELECT B'01', X'AF', N';';", 1, 1),
          SQL("SELECT 2;", 1, 28));
    CHECK("SELECT 'a\n;b'\n  'c'; x", SQL("SELECT 'a\n;b'\n  'c';", 1, 1), SQL("x", 3, 8));
    /* psql 15 "trailing junk": 1e is one token, so ' starts a standard string */
    CHECK("SELECT 1e'\\'; SELECT 2;", SQL("SELECT 1e'\\';", 1, 1), SQL("SELECT 2;", 1, 15));
}

static void identifiers(void) {
    CHECK("SELECT \"a;\"\"b\"; SELECT 2;", SQL("SELECT \"a;\"\"b\";", 1, 1),
          SQL("SELECT 2;", 1, 17));
    CHECK("SELECT U&\"d;\" UESCAPE '!'; x;", SQL("SELECT U&\"d;\" UESCAPE '!';", 1, 1),
          SQL("x;", 1, 28));
    /* U& not followed by a quote is U, then & */
    CHECK("SELECT u&1; x;", SQL("SELECT u&1;", 1, 1), SQL("x;", 1, 13));
}

static void dollars(void) {
    CHECK("SELECT $$a;b$$; SELECT 2;", SQL("SELECT $$a;b$$;", 1, 1), SQL("SELECT 2;", 1, 17));
    CHECK("DO $fn$ BEGIN $$;$$; END $fn$; x;", SQL("DO $fn$ BEGIN $$;$$; END $fn$;", 1, 1),
          SQL("x;", 1, 32));
    /* a wrong tag is given back but for its last $, which may open the right one */
    CHECK("SELECT $a$x$junk$a$; x;", SQL("SELECT $a$x$junk$a$;", 1, 1), SQL("x;", 1, 22));
    CHECK("SELECT $A$ $a$; $A$; x;", SQL("SELECT $A$ $a$; $A$;", 1, 1), SQL("x;", 1, 22));
    /* $1 is a parameter, $1$ is no tag, and an identifier may hold $ */
    CHECK("SELECT $1; SELECT a$b$; SELECT $1$;", SQL("SELECT $1;", 1, 1),
          SQL("SELECT a$b$;", 1, 12), SQL("SELECT $1$;", 1, 25));
    /* "$junk" is only a $, then an identifier */
    CHECK("SELECT $junk; x;", SQL("SELECT $junk;", 1, 1), SQL("x;", 1, 15));
    /* a number with an identifier glued on takes the $$ with it */
    CHECK("SELECT 1e$$; x;", SQL("SELECT 1e$$;", 1, 1), SQL("x;", 1, 14));
    CHECK("SELECT 1$$;$$; x;", SQL("SELECT 1$$;$$;", 1, 1), SQL("x;", 1, 16));
    CHECK("SELECT $_$;$_$, $é$;$é$; x;", SQL("SELECT $_$;$_$, $é$;$é$;", 1, 1), SQL("x;", 1, 28));
}

static void comments(void) {
    /* leading -- comments and whitespace are dropped, a leading block comment is sent */
    CHECK("  -- one;\n/* two; */ SELECT 1; -- three\n  SELECT /* ; */ 2 -- ;\n;",
          SQL("/* two; */ SELECT 1;", 2, 1), SQL("SELECT /* ; */ 2 -- ;\n;", 3, 3));
    CHECK("/* a /* b; */ c; */ SELECT 1; x;", SQL("/* a /* b; */ c; */ SELECT 1;", 1, 1),
          SQL("x;", 1, 31));
    CHECK("SELECT 1 +/* c; */ 2; SELECT 2--;\n;", SQL("SELECT 1 +/* c; */ 2;", 1, 1),
          SQL("SELECT 2--;\n;", 1, 23));
    CHECK("/*/ still; */ SELECT 1 /** ; **/;", SQL("/*/ still; */ SELECT 1 /** ; **/;", 1, 1));
    /* a -- comment ends at CR too */
    CHECK("SELECT 1 --c\r;", SQL("SELECT 1 --c\r;", 1, 1));
}

static void atomic(void) {
    CHECK("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; x;",
          SQL("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;",
              1, 1),
          SQL("x;", 1, 84));
    CHECK("create or replace procedure p() begin atomic select case when true then 1 end; end; x;",
          SQL("create or replace procedure p() begin atomic select case when true then 1 end; end;",
              1, 1),
          SQL("x;", 1, 85));
    /* only CREATE [OR REPLACE] FUNCTION|PROCEDURE bodies count BEGIN and END */
    CHECK("BEGIN; SELECT CASE WHEN true THEN 1 END; END;", SQL("BEGIN;", 1, 1),
          SQL("SELECT CASE WHEN true THEN 1 END;", 1, 8), SQL("END;", 1, 42));
    CHECK("CREATE TRIGGER t BEFORE INSERT ON x EXECUTE FUNCTION begin(); y;",
          SQL("CREATE TRIGGER t BEFORE INSERT ON x EXECUTE FUNCTION begin();", 1, 1),
          SQL("y;", 1, 63));
    /* psql's heuristic is fooled by a function named begin, and we are fooled with it */
    CHECK("CREATE FUNCTION begin() RETURNS int RETURN 1; SELECT 2;",
          SQL("CREATE FUNCTION begin() RETURNS int RETURN 1; SELECT 2;", 1, 1));
    /* words inside parentheses are not counted at all (psql 15.19+) */
    CHECK("create (a) function begin; select 1; end; x;",
          SQL("create (a) function begin; select 1; end;", 1, 1), SQL("x;", 1, 43));
    /* quoted words and psql variables are not identifiers */
    CHECK("CREATE FUNCTION f() \"begin\" :{?begin}; x;",
          SQL("CREATE FUNCTION f() \"begin\" :{?begin};", 1, 1), SQL("x;", 1, 40));
}

static void structure(void) {
    /* no end at ; inside parentheses */
    CHECK("CREATE RULE r AS ON INSERT TO t DO (INSERT INTO a VALUES (1); NOTIFY x); y;",
          SQL("CREATE RULE r AS ON INSERT TO t DO (INSERT INTO a VALUES (1); NOTIFY x);", 1, 1),
          SQL("y;", 1, 74));
    /* empty statements and comment-only statements are skipped */
    CHECK(";;\n ; /* c */ ;SELECT 1;; ;", SQL("SELECT 1;", 2, 13));
    CHECK("SELECT 1;\n/* trailing */\n-- end\n", SQL("SELECT 1;", 1, 1));
    /* the last statement runs to the end of input, minus empty lines and the final newline */
    CHECK("SELECT 1;\n\n  SELECT 2\n\n  -- c\n   \n\n", SQL("SELECT 1;", 1, 1),
          SQL("SELECT 2\n  -- c\n   ", 3, 3));
    /* psql drops empty lines, except inside quotes and comments */
    CHECK("SELECT\n\n1,\n\n'a\n\nb', /*\n\n*/ $$\n\n$$;",
          SQL("SELECT\n1,\n'a\n\nb', /*\n\n*/ $$\n\n$$;", 1, 1));
    /* CRLF: lines holding a CR are not empty */
    CHECK("SELECT 1\r\n\r\n;\r\nSELECT 2;\r\n", SQL("SELECT 1\r\n\r\n;", 1, 1),
          SQL("SELECT 2;", 4, 1));
    /* a BOM is skipped and not counted in columns */
    CHECK("\xEF\xBB\xBF  SELECT 1;", SQL("SELECT 1;", 1, 3));
    /* columns count bytes */
    CHECK("SELECT 'é'; SELECT 2;", SQL("SELECT 'é';", 1, 1), SQL("SELECT 2;", 1, 14));
    /* :: and := are not variables, :'x' is one token */
    CHECK("SELECT 1::int, f(a := 1), :'v;'; x;", SQL("SELECT 1::int, f(a := 1), :'v;';", 1, 1),
          SQL("x;", 1, 34));
}

static void copy(void) {
    const char *in = "COPY t (a) FROM stdin; -- data follows\n1\n;2\n\\.\nSELECT 1;\n";
    CHECK(in, COPY("COPY t (a) FROM stdin;", 1, 1), SQL("SELECT 1;", 5, 1));
    check_copy(__LINE__, in, 0, "1\n;2\n", 3, 4);
    in = "copy t from STDIN with (format csv)\n;\r\na,\"b\r\n\"\r\n\\.\r\nx;";
    CHECK(in, COPY("copy t from STDIN with (format csv)\n;", 1, 1), SQL("x;", 6, 1));
    check_copy(__LINE__, in, 0, "a,\"b\r\n\"\r\n", 4, 5);
    /* FROM STDOUT is taken as FROM STDIN by the grammar; TO STDOUT is not COPY IN */
    CHECK("COPY t FROM stdout;\n\\.\nCOPY t TO stdout; COPY (SELECT 1 FROM stdin) TO stdout;",
          COPY("COPY t FROM stdout;", 1, 1), SQL("COPY t TO stdout;", 3, 1),
          SQL("COPY (SELECT 1 FROM stdin) TO stdout;", 3, 19));
    /* no \. line: the data run to the end; \. without a newline is data, as psql sends it */
    in = "COPY t FROM stdin;\n1\n\\.";
    CHECK(in, COPY("COPY t FROM stdin;", 1, 1));
    check_copy(__LINE__, in, 0, "1\n\\.", 0, 3);
    in = "COPY t FROM stdin;";
    CHECK(in, COPY("COPY t FROM stdin;", 1, 1));
    check_copy(__LINE__, in, 0, "", 0, 1);
    /* lines that only look like the end */
    in = "COPY t FROM stdin;\n \\.\n\\.x\n\\\\.\n\\.\n";
    check_copy(__LINE__, in, 0, " \\.\n\\.x\n\\\\.\n", 3, 5);
    ERROR("COPY t FROM stdin; SELECT 1;\n\\.\n",
          "SQL after COPY ... FROM STDIN on the same line is not supported", 1, 20);
}

static void metas(void) {
    CHECK("\\set x 1\nSELECT 1;\n  \\i other.sql\r\n", META("\\set x 1", 1, 1),
          SQL("SELECT 1;", 2, 1), META("\\i other.sql", 3, 3));
    /* a meta-command cuts the pending statement; a line of its own adds no newline */
    CHECK("SELECT 1\n\\gset\nSELECT 2 \\g\n", SQL("SELECT 1", 1, 1), META("\\gset", 2, 1),
          SQL("SELECT 2 ", 3, 1), META("\\g", 3, 10));
    CHECK("SELECT 1 \\; SELECT 2;", SQL("SELECT 1 ", 1, 1), META("\\;", 1, 10),
          SQL("SELECT 2;", 1, 13));
    /* backslashes inside quotes are not meta-commands */
    CHECK("SELECT '\\x', E'\\\\', \"\\\", $$\\$$;",
          SQL("SELECT '\\x', E'\\\\', \"\\\", $$\\$$;", 1, 1));
}

static void errors(void) {
    ERROR("SELECT 1;\nSELECT 'abc;\n", "unterminated quoted string", 2, 8);
    ERROR("SELECT E'abc\\';", "unterminated quoted string", 1, 8);
    ERROR("SELECT \"abc;", "unterminated quoted identifier", 1, 8);
    ERROR("SELECT U&\"abc;", "unterminated quoted identifier", 1, 8);
    ERROR("\n\n  DO $fn$ BEGIN END $f$;", "unterminated dollar-quoted string", 3, 6);
    ERROR("SELECT 1; /* a /* b */ c", "unterminated /* comment", 1, 11);
    ERROR("SELECT B'01", "unterminated bit string literal", 1, 8);
    ERROR("SELECT X'01", "unterminated hexadecimal string literal", 1, 8);
    ERROR("\xEF\xBB\xBFSELECT 'x", "unterminated quoted string", 1, 8);
    struct split_result r;
    static const char nul[] = "SELECT 1;\nSELECT '\0';";
    if (split_sql(nul, sizeof nul - 1, &r) != SPLIT_EINPUT || r.error.line != 2 ||
        r.error.column != 9) {
        fprintf(stderr, "FAIL: NUL byte\n");
        failures++;
    }
    split_free(&r);
    /* statements before an error are kept, for the record */
    if (split_sql("SELECT 1; '", 11, &r) != SPLIT_EINPUT || r.count != 1) {
        fprintf(stderr, "FAIL: statements before an error\n");
        failures++;
    }
    split_free(&r);
}

static void empty(void) {
    struct split_result r;
    if (split_sql("", 0, &r) != SPLIT_OK || r.count != 0) {
        fprintf(stderr, "FAIL: empty input\n");
        failures++;
    }
    split_free(&r);
    if (split_sql("\xEF\xBB\xBF \n-- x\n", 9, &r) != SPLIT_OK || r.count != 0 || r.bom != 3) {
        fprintf(stderr, "FAIL: BOM and comment only\n");
        failures++;
    }
    split_free(&r);
}

/* split_head: the words every classifier reads. */
static void check_head(int at, const char *in, size_t max, const char *want, size_t first) {
    char buf[128];
    struct split_head h = {.out = buf, .cap = sizeof buf, .max_tokens = max};
    split_head(in, strlen(in), &h);
    if (strcmp(buf, want) != 0 || h.first != first) {
        fprintf(stderr, "FAIL (line %d): head \"%s\" at %zu, want \"%s\" at %zu\n", at, buf,
                h.first, want, first);
        failures++;
    }
}

static void heads(void) {
    check_head(__LINE__, "/* a /* b */ c */ CoMmIt;", 4, "commit ;", 18);
    check_head(__LINE__, "-- x\n  /**/ End Work;", 4, "end work ;", 12);
    check_head(__LINE__, "select 'COMMIT', E'a\\'b', $q$x$q$, \"Tab\";", 16,
               "select '?' , '?' , $?$ , \"Tab\" ;", 0);
    check_head(__LINE__, "reindex (verbose) schema s", 16, "reindex ( verbose ) schema s", 0);
    check_head(__LINE__, "create index concurrently i on t", 3, "create index concurrently", 0);
    check_head(__LINE__, "/* only a comment */", 4, "", SIZE_MAX);
    check_head(__LINE__, "/* unterminated", 4, "", SIZE_MAX);
}

int main(void) {
    heads();
    strings();
    identifiers();
    dollars();
    comments();
    atomic();
    structure();
    copy();
    metas();
    errors();
    empty();
    if (failures) {
        fprintf(stderr, "%d failed\n", failures);
        return 1;
    }
    printf("splitter: all passed\n");
    return 0;
}
