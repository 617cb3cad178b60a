/* Splits SQL text into the statements psql 15 would send, in one pass (pure C, no Lua). */
#ifndef MOONSHIFT_SPLITTER_H
#define MOONSHIFT_SPLITTER_H
#include <stddef.h>

/*
 * The rules are those of psql -f (src/fe_utils/psqlscan.l and mainloop.c of psql 15.20,
 * checked against the server's log of what psql sent; see spec/e2e/psql_diff_spec.lua):
 *
 * - A statement ends at a `;` outside quotes, comments and dollar quotes, when no
 *   parenthesis is open and no BEGIN ... END of a CREATE [OR REPLACE] FUNCTION/PROCEDURE
 *   body is open (psql's begin_depth heuristic: BEGIN, CASE inside a BEGIN, and END are
 *   counted among the identifiers outside parentheses, once the statement's first
 *   identifiers read CREATE [OR REPLACE] FUNCTION|PROCEDURE). The `;` is part of the text.
 * - psql drops whitespace and `--` comments before a statement's first byte; a leading
 *   block comment is kept and starts the statement. `--` comments inside are sent.
 * - psql reads its file line by line and drops empty lines outside quotes and comments;
 *   the newlines it drops are listed in `drops` (split_text() applies them). A statement
 *   left without `;` at the end of the input runs to the end (minus the final newline).
 * - A "statement" with nothing but comments before its `;` (or before the end of input) is
 *   skipped: psql sends it but the server does nothing with it.
 * - COPY ... FROM STDIN (or STDOUT, which the grammar takes as the same thing) is kind
 *   SPLIT_COPY; its data are the lines after the line of its `;` up to, not including, a
 *   line that is exactly `\.` (LF or CRLF). The rest of that line may hold only whitespace,
 *   `;` and a `--` comment (psql would run SQL there after the data; refused as an error).
 * - A backslash outside quotes starts a psql meta-command (SPLIT_META) that runs to the
 *   end of its line; `\;` and `\:` are two-byte meta-commands. Whatever statement was
 *   pending before it is cut there (as \g would send it).
 * - A UTF-8 BOM at offset 0 is skipped (psql skips it when its client encoding is UTF8).
 * - Assumed, as psql assumes from the server: standard_conforming_strings = on, a
 *   client encoding that is ASCII-safe (UTF-8). psql :variables are not interpolated.
 * - Lines count LF only; columns are 1-based byte offsets within the line (a skipped BOM
 *   is not counted). A NUL byte is an error (psql and libpq would truncate there).
 */

enum split_kind { SPLIT_SQL = 0, SPLIT_COPY = 1, SPLIT_META = 2 };

struct split_stmt {
    enum split_kind kind;
    size_t start, len;             /* its source bytes: text[start .. start + len) */
    size_t line, column;           /* where it starts, 1-based */
    size_t end_line;               /* its last non-blank line; a COPY's data and `\.` count */
    size_t drop_first, drop_count; /* its newlines psql drops: result.drops[first ...] */
    size_t word_len;               /* META: the command word's length, backslash included */
    size_t data_start, data_len;   /* COPY: the inline data lines */
    size_t data_line;              /* COPY: the line of data_start */
    size_t term_len;               /* COPY: the `\.` line after them (0 if the input ended) */
};

struct split_error {
    const char *message; /* a static string, e.g. "unterminated quoted string" */
    size_t offset;       /* where the offending token begins */
    size_t line, column;
};

struct split_result {
    struct split_stmt *stmts;
    size_t count, cap;
    size_t *drops; /* offsets of newlines psql drops, ascending */
    size_t ndrops, drops_cap;
    size_t bom; /* 3 if a UTF-8 BOM was skipped, else 0 */
    struct split_error error;
};

enum { SPLIT_OK = 0, SPLIT_EINPUT = 1, SPLIT_ENOMEM = 2 };

/* Splits text[0 .. len). Returns SPLIT_OK, SPLIT_EINPUT (out->error is set; the statements
 * before the error are kept) or SPLIT_ENOMEM. Always call split_free(out) afterwards. */
int split_sql(const char *text, size_t len, struct split_result *out);

/* Writes the text psql sends for s (its bytes minus dropped newlines) to out, which must
 * hold s->len bytes; returns the length written. */
size_t split_text(const char *text, const struct split_result *r, const struct split_stmt *s,
                  char *out);

void split_free(struct split_result *r);

/* The same split, one statement at a time, so a large file never needs the whole list: the
 * statements come out as split_sql() would list them (the NUL check excepted: the caller
 * checks the input first). `progress`, if not NULL, hears every few megabytes how far the
 * data of a COPY were scanned. A statement and its drops (split_stream_result) stay valid
 * until the next call; on SPLIT_EINPUT split_stream_result()->error says where. */
struct split_stream;
struct split_stream *split_stream_new(const char *text, size_t len,
                                      void (*progress)(void *ctx, size_t offset), void *ctx);
/* The next statement; NULL at the end (*rc = SPLIT_OK) or on an error (*rc set). */
const struct split_stmt *split_stream_next(struct split_stream *ss, int *rc);
const struct split_result *split_stream_result(const struct split_stream *ss);
void split_stream_free(struct split_stream *ss);

/* The first words of one statement as the server's grammar sees them: comments (nested
 * block comments too) and whitespace dropped, unquoted words lowercased (ASCII), a string
 * or dollar-quoted body as '?' or $?$, quoted identifiers kept, any other byte a token of
 * its own; tokens joined by one space. The caller sets out, cap and max_tokens. */
struct split_head {
    char *out;
    size_t cap, max_tokens;
    size_t len, tokens;
    size_t first; /* offset of the first token, SIZE_MAX if there is none */
};

/* Fills h from text[0 .. len); returns the number of tokens. Unterminated quotes or
 * comments end the head there (the splitter reports them). */
int split_head(const char *text, size_t len, struct split_head *h);

#endif
