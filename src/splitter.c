/* Splits SQL text into the statements psql 15 would send: a single-pass lexer after
 * psqlscan.l (rules and their reasons in splitter.h). No recursion, no allocation per
 * byte; memory is the statement and dropped-newline arrays, both bounded by the input. */
#include "splitter.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* psqlscan.l's character classes (PostgreSQL 15: \v is not whitespace), as a table. */
enum { C_SPACE = 1, C_DIGIT = 2, C_IDSTART = 4, C_IDCONT = 8 }; /* IDCONT: {ident_cont} */
#define C_VAR (C_IDSTART | C_DIGIT)                             /* {variable_char} */
#define C_ID (C_IDSTART | C_IDCONT)
#define C_DIG (C_DIGIT | C_IDCONT)

#define R4(x) x, x, x, x
#define R16(x) R4(x), R4(x), R4(x), R4(x)
#define LETTERS26 R16(C_ID), R4(C_ID), R4(C_ID), C_ID, C_ID
// clang-format off
static const unsigned char CLASS[256] = {
    /* 0x00 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, C_SPACE, C_SPACE, 0, C_SPACE, C_SPACE, 0, 0,
    /* 0x10 */ R16(0),
    /* 0x20 */ C_SPACE, 0, 0, 0, C_IDCONT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x30 */ R4(C_DIG), R4(C_DIG), C_DIG, C_DIG, 0, 0, 0, 0, 0, 0,
    /* 0x40 */ 0, LETTERS26, 0, 0, 0, 0, C_ID,
    /* 0x60 */ 0, LETTERS26, 0, 0, 0, 0, 0,
    /* 0x80 */ R16(C_ID), R16(C_ID), R16(C_ID), R16(C_ID),
    /* 0xC0 */ R16(C_ID), R16(C_ID), R16(C_ID), R16(C_ID),
};
// clang-format on

static inline int is_space(unsigned c) { return CLASS[c] & C_SPACE; }
static inline int is_digit(unsigned c) { return CLASS[c] & C_DIGIT; }
static inline int is_ident_start(unsigned c) { return CLASS[c] & C_IDSTART; }
static inline int is_var_char(unsigned c) { return CLASS[c] & C_VAR; }
static inline int is_ident_cont(unsigned c) { return CLASS[c] & C_IDCONT; }

/* The end of the run of {ident_cont} bytes from q. */
static inline size_t ident_end(const unsigned char *s, size_t n, size_t q) {
    while (q < n && (CLASS[s[q]] & C_IDCONT))
        q++;
    return q;
}

struct lexer {
    const unsigned char *s;
    size_t n;
    struct split_result *r;
    size_t line, bol; /* the line being read and the offset where it begins */
    /* The statement being collected: psql's query buffer. */
    int pending;   /* psql has echoed something into it */
    int has_token; /* ... and not only comments */
    size_t start, start_line, start_column;
    size_t last_line; /* where its last non-blank byte is */
    size_t drop_mark; /* r->ndrops when it began */
    size_t paren, begin;
    unsigned nidents;
    char idents[8]; /* psql's record of the first identifiers outside parentheses */
    int routine;    /* they read CREATE [OR REPLACE] FUNCTION|PROCEDURE */
    int is_copy, after_from, from_stdin;
    /* Stepwise (split_stream_next): where lex() resumes, and who hears how far COPY data
     * was scanned (so the pages behind can be dropped). */
    size_t p;
    int stepwise, done;
    void (*progress)(void *ctx, size_t offset);
    void *progress_ctx;
};

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / size)
            return -1;
        ncap *= 2;
    }
    void *np = realloc(*p, ncap * size);
    if (!np)
        return -1;
    *p = np;
    *cap = ncap;
    return 0;
}

/* The number of LF bytes in s[i .. end), eight bytes at a time: in w ^ "\n\n...", a byte
 * is zero exactly where s held a newline, and the formula below sets the high bit of
 * every other byte (without carries between bytes). */
static size_t count_newlines(const unsigned char *s, size_t i, size_t end) {
    const uint64_t lows = 0x7f7f7f7f7f7f7f7fULL, highs = 0x8080808080808080ULL;
    size_t count = 0;
    for (; i + 8 <= end; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        w ^= 0x0a0a0a0a0a0a0a0aULL;
        uint64_t zero = ~(((w & lows) + lows) | w) & highs;
        count += (size_t)(((zero >> 7) * 0x0101010101010101ULL) >> 56);
    }
    for (; i < end; i++)
        count += s[i] == '\n';
    return count;
}

/* Moves the line bookkeeping over s[from .. to), a token that may span lines. */
static void pass_lines(struct lexer *lx, size_t from, size_t to) {
    size_t k = count_newlines(lx->s, from, to);
    if (k) {
        lx->line += k;
        while (lx->s[to - 1] != '\n')
            to--;
        lx->bol = to;
    }
}

static inline void newline_at(struct lexer *lx, size_t p) {
    lx->line++;
    lx->bol = p + 1;
}

/* The current line's column of p (a skipped BOM is not counted). */
static inline size_t column_of(const struct lexer *lx, size_t p) {
    return p >= lx->bol ? p - lx->bol + 1 : 1;
}

static int fail(struct lexer *lx, size_t at, const char *message) {
    struct split_error *e = &lx->r->error;
    e->message = message;
    e->offset = at;
    e->line = lx->line;
    e->column = column_of(lx, at);
    return SPLIT_EINPUT;
}

static void reset_statement(struct lexer *lx) {
    lx->pending = lx->has_token = 0;
    lx->paren = lx->begin = 0;
    lx->nidents = 0;
    lx->routine = 0;
    lx->is_copy = lx->after_from = lx->from_stdin = 0;
}

/* Something psql echoes into the buffer begins at p. */
static inline void echo_at(struct lexer *lx, size_t p) {
    if (!lx->pending) {
        lx->pending = 1;
        lx->start = p;
        lx->start_line = lx->line;
        lx->start_column = column_of(lx, p);
        lx->drop_mark = lx->r->ndrops;
    }
}

/* A token (not a comment, not whitespace) begins at p. */
static inline void token_at(struct lexer *lx, size_t p) {
    echo_at(lx, p);
    lx->has_token = 1;
    lx->after_from = 0;
}

static struct split_stmt *push_stmt(struct lexer *lx) {
    struct split_result *r = lx->r;
    if (grow((void **)&r->stmts, &r->cap, r->count + 1, sizeof *r->stmts))
        return NULL;
    struct split_stmt *st = &r->stmts[r->count++];
    memset(st, 0, sizeof *st);
    st->drop_first = r->ndrops;
    return st;
}

/* Ends the pending statement at `end` (exclusive). Returns the new statement, NULL with
 * *rc = SPLIT_OK if there was nothing to send, or NULL with *rc set on failure. */
static struct split_stmt *finish(struct lexer *lx, size_t end, int *rc) {
    *rc = SPLIT_OK;
    if (!lx->pending || !lx->has_token) {
        if (lx->pending)
            lx->r->ndrops = lx->drop_mark;
        reset_statement(lx);
        return NULL;
    }
    struct split_stmt *st = push_stmt(lx);
    if (!st) {
        *rc = SPLIT_ENOMEM;
        return NULL;
    }
    st->kind = lx->from_stdin ? SPLIT_COPY : SPLIT_SQL;
    st->start = lx->start;
    st->len = end - lx->start;
    st->drop_first = lx->drop_mark;
    st->drop_count = lx->r->ndrops - lx->drop_mark;
    st->line = lx->start_line;
    st->column = lx->start_column;
    st->end_line = lx->last_line;
    reset_statement(lx);
    return st;
}

/* The inline data of a COPY ... FROM STDIN that ended at p: the rest of p's line must be
 * empty but for whitespace, `;` and a `--` comment; the data start on the next line.
 * Returns the position after the `\.` line (or the end of input), or SIZE_MAX on error. */
static size_t copy_data(struct lexer *lx, size_t copy_index, size_t p, int *rc) {
    const unsigned char *s = lx->s;
    size_t n = lx->n;
    while (p < n && s[p] != '\n') {
        unsigned c = s[p];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == ';') {
            p++;
        } else if (c == '-' && p + 1 < n && s[p + 1] == '-') {
            while (p < n && s[p] != '\n' && s[p] != '\r')
                p++;
        } else {
            *rc = fail(lx, p, "SQL after COPY ... FROM STDIN on the same line is not supported");
            return SIZE_MAX;
        }
    }
    struct split_stmt *st = &lx->r->stmts[copy_index];
    size_t d = n;
    if (p < n) {
        newline_at(lx, p);
        d = p + 1;
    }
    st->data_line = lx->line;
    st->data_start = d;
    st->data_len = n - d;
    size_t ls = d;
    while (ls < n) {
        const unsigned char *nl = memchr(s + ls, '\n', n - ls);
        if (!nl) {
            st->end_line = lx->line; /* a last line without a newline */
            return n;
        }
        size_t le = (size_t)(nl - s) + 1, ll = le - ls;
        if (lx->progress && ((ls ^ le) >> 22))
            lx->progress(lx->progress_ctx, ls); /* every 4 MB */
        st->end_line = lx->line;
        newline_at(lx, le - 1);
        if ((ll == 3 || (ll == 4 && s[ls + 2] == '\r')) && s[ls] == '\\' && s[ls + 1] == '.') {
            st->data_len = ls - d;
            st->term_len = ll;
            return le;
        }
        ls = le;
    }
    return n;
}

static int word_is(const unsigned char *w, size_t len, const char *kw) {
    size_t i = 0;
    for (; i < len; i++)
        if (kw[i] == '\0' || (unsigned char)(w[i] | 0x20) != (unsigned char)kw[i])
            return 0;
    return kw[i] == '\0';
}

/* psql records the first letter of CREATE, FUNCTION, PROCEDURE, OR, REPLACE. */
static char keyword_letter(const unsigned char *w, size_t len) {
    switch (len) {
    case 2:
        return word_is(w, len, "or") ? 'o' : 0;
    case 6:
        return word_is(w, len, "create") ? 'c' : 0;
    case 7:
        return word_is(w, len, "replace") ? 'r' : 0;
    case 8:
        return word_is(w, len, "function") ? 'f' : 0;
    case 9:
        return word_is(w, len, "procedure") ? 'p' : 0;
    default:
        return 0;
    }
}

static int is_create_routine(const char *id) {
    return id[0] == 'c' && (id[1] == 'f' || id[1] == 'p' ||
                            (id[1] == 'o' && id[2] == 'r' && (id[3] == 'f' || id[3] == 'p')));
}

/* An identifier outside quotes: psql's BEGIN ... END tracking, and our COPY detection. */
static void identifier(struct lexer *lx, const unsigned char *w, size_t len, int first) {
    if (first && len == 4 && word_is(w, len, "copy"))
        lx->is_copy = 1;
    if (lx->paren != 0)
        return;
    if (lx->is_copy) {
        if (lx->after_from && (word_is(w, len, "stdin") || word_is(w, len, "stdout")))
            lx->from_stdin = 1;
        lx->after_from = word_is(w, len, "from");
    }
    if (lx->nidents < sizeof lx->idents) {
        if (lx->nidents == 0)
            memset(lx->idents, 0, sizeof lx->idents);
        lx->idents[lx->nidents++] = keyword_letter(w, len);
        lx->routine = is_create_routine(lx->idents);
    }
    if (lx->routine && len >= 3 && len <= 5) {
        if (word_is(w, len, "begin"))
            lx->begin++;
        else if (word_is(w, len, "case")) {
            if (lx->begin >= 1)
                lx->begin++;
        } else if (word_is(w, len, "end")) {
            if (lx->begin > 0)
                lx->begin--;
        }
    }
}

/* The extent of a number token at p (a digit, or `.` and a digit): psql 15's integer,
 * decimal, real and their "junk" forms (a number with an identifier glued on is one
 * token), taking the longest match as flex does. */
static size_t number_end(const unsigned char *s, size_t n, size_t p) {
    size_t q = p;
    while (q < n && is_digit(s[q]))
        q++;
    size_t base = q;
    if (q < n && s[q] == '.') {
        if (q > p && q + 1 < n && s[q + 1] == '.')
            return q; /* decimalfail: "1..": the integer, then "..". */
        base = q + 1;
        while (base < n && is_digit(s[base]))
            base++;
    }
    size_t best = base;
    if (base < n && is_ident_start(s[base])) { /* integer_junk, decimal_junk */
        size_t j = base + 1;
        while (j < n && is_ident_cont(s[j]))
            j++;
        best = j;
    }
    if (base < n && (s[base] | 0x20) == 'e') {
        size_t e = base + 1;
        int sign = e < n && (s[e] == '+' || s[e] == '-');
        if (sign)
            e++;
        if (e < n && is_digit(s[e])) { /* real, real_junk */
            while (e < n && is_digit(s[e]))
                e++;
            if (e < n && is_ident_start(s[e]))
                while (e < n && is_ident_cont(s[e]))
                    e++;
            if (e > best)
                best = e;
        } else if (sign && e > best) { /* realfail: "1e+" */
            best = e;
        }
    }
    return best;
}

/* Position after the closing quote of a string or quoted identifier whose body starts at
 * p, or SIZE_MAX. A doubled quote stays inside; with `escapes`, so does \<any byte>. */
static size_t quoted_end(const unsigned char *s, size_t n, size_t p, unsigned char q, int escapes) {
    if (!escapes) {
        for (;;) {
            const unsigned char *m = p < n ? memchr(s + p, q, n - p) : NULL;
            if (!m)
                return SIZE_MAX;
            p = (size_t)(m - s) + 1;
            if (p < n && s[p] == q)
                p++;
            else
                return p;
        }
    }
    while (p < n) {
        unsigned c = s[p];
        if (c == '\\') {
            p += 2;
        } else if (c == q) {
            if (p + 1 < n && s[p + 1] == q)
                p += 2;
            else
                return p + 1;
        } else {
            p++;
        }
    }
    return SIZE_MAX;
}

/* The length of psql's {dolqdelim} ($tag$ or $$) at p, or 0; *failed_end is where a
 * {dolqfailed} ($tag without the closing $) ends, else p + 1. */
static size_t dolq_delim(const unsigned char *s, size_t n, size_t p, size_t *failed_end) {
    size_t j = p + 1;
    *failed_end = j;
    if (j < n && s[j] == '$')
        return 2;
    if (j >= n || !is_ident_start(s[j]))
        return 0;
    while (j < n && (is_ident_start(s[j]) || is_digit(s[j])))
        j++;
    if (j < n && s[j] == '$')
        return j - p + 1;
    *failed_end = j;
    return 0;
}

/* Position after the dollar-quoted body opened by the `dl`-byte delimiter at p, or
 * SIZE_MAX. Each byte is looked at most twice: a wrong $tag$ is rescanned from its last $. */
static size_t dollar_end(const unsigned char *s, size_t n, size_t p, size_t dl) {
    size_t i = p + dl;
    for (;;) {
        const unsigned char *m = i < n ? memchr(s + i, '$', n - i) : NULL;
        if (!m)
            return SIZE_MAX;
        i = (size_t)(m - s);
        size_t failed_end, len = dolq_delim(s, n, i, &failed_end);
        if (len == 0)
            i = failed_end;
        else if (len == dl && memcmp(s + i, s + p, dl) == 0)
            return i + len;
        else
            i += len - 1;
    }
}

/* Position after the block comment opened at p (nesting counted), or SIZE_MAX. */
static size_t comment_end(const unsigned char *s, size_t n, size_t p) {
    size_t depth = 0, i = p + 2;
    while (i < n) {
        unsigned c = s[i];
        if (c == '/') {
            if (i + 1 < n && s[i + 1] == '*') {
                depth++;
                i += 2;
            } else {
                i++;
            }
        } else if (c == '*') {
            while (i < n && s[i] == '*')
                i++;
            if (i < n && s[i] == '/') {
                i++;
                if (depth == 0)
                    return i;
                depth--;
            }
        } else {
            i++;
        }
    }
    return SIZE_MAX;
}

/* A meta-command from p to end (exclusive): cut the pending statement before it, as psql
 * does (a line holding only the command adds no newline to the buffer). */
static int meta(struct lexer *lx, size_t p, size_t end, size_t word_len, size_t *next) {
    int rc;
    size_t cut = p;
    if (lx->pending && cut > lx->start && lx->s[cut - 1] == '\n')
        cut--;
    struct split_stmt *prev = finish(lx, cut, &rc);
    if (rc)
        return rc;
    size_t prev_index = prev ? lx->r->count - 1 : 0;
    int prev_copy = prev && prev->kind == SPLIT_COPY;
    struct split_stmt *st = push_stmt(lx);
    if (!st)
        return SPLIT_ENOMEM;
    st->kind = SPLIT_META;
    st->start = p;
    st->len = end - p;
    st->word_len = word_len;
    st->line = st->end_line = lx->line;
    st->column = column_of(lx, p);
    *next = end;
    if (prev_copy) {
        size_t after = copy_data(lx, prev_index, end, &rc);
        if (after == SIZE_MAX)
            return rc;
        *next = after;
    }
    return SPLIT_OK;
}

/* Records a newline psql drops: an empty line outside quotes, or the input's last byte. */
static inline int drop(struct split_result *r, size_t p) {
    if (grow((void **)&r->drops, &r->drops_cap, r->ndrops + 1, sizeof *r->drops))
        return SPLIT_ENOMEM;
    r->drops[r->ndrops++] = p;
    return SPLIT_OK;
}

static int lex(struct lexer *lx) {
    const unsigned char *s = lx->s;
    const size_t n = lx->n;
    struct split_result *r = lx->r;
    size_t p = lx->p;
    int rc;

    while (p < n) {
        if (lx->stepwise && r->count > 0) {
            lx->p = p;
            return SPLIT_OK;
        }
        unsigned c = s[p];
        unsigned k = CLASS[c];
        if (k & C_IDSTART) {
            size_t q = ident_end(s, n, p + 1);
            if (q == p + 1 && q < n && (s[q] == '\'' || s[q] == '&')) {
                unsigned lc = c | 0x20, next = s[q];
                if (next == '\'' && (lc == 'b' || lc == 'x' || lc == 'e' || lc == 'n')) {
                    /* B'', X'', E'' (backslash escapes), N'' (the N is its own token). */
                    size_t e = quoted_end(s, n, p + 2, '\'', lc == 'e');
                    if (e == SIZE_MAX)
                        return fail(lx, p,
                                    lc == 'b'   ? "unterminated bit string literal"
                                    : lc == 'x' ? "unterminated hexadecimal string literal"
                                                : "unterminated quoted string");
                    token_at(lx, p);
                    pass_lines(lx, p, e);
                    lx->last_line = lx->line;
                    p = e;
                    continue;
                }
                if (next == '&' && lc == 'u') {
                    unsigned q3 = p + 2 < n ? s[p + 2] : 0;
                    token_at(lx, p);
                    lx->last_line = lx->line;
                    if (q3 == '\'' || q3 == '"') {
                        size_t e = quoted_end(s, n, p + 3, (unsigned char)q3, 0);
                        if (e == SIZE_MAX)
                            return fail(lx, p,
                                        q3 == '"' ? "unterminated quoted identifier"
                                                  : "unterminated quoted string");
                        pass_lines(lx, p, e);
                        lx->last_line = lx->line;
                        p = e;
                    } else {
                        p++; /* {xufailed}: the U alone, not an identifier */
                    }
                    continue;
                }
            }
            int first = !lx->has_token;
            int was_from = lx->after_from;
            token_at(lx, p);
            lx->after_from = was_from;
            lx->last_line = lx->line;
            /* Most identifiers matter to no rule: skip the keyword checks for them. */
            if (first ||
                (lx->paren == 0 && (lx->nidents < sizeof lx->idents || lx->routine || lx->is_copy)))
                identifier(lx, s + p, q - p, first);
            p = q;
            continue;
        }
        if (k & C_SPACE) {
            if (!lx->pending) {
                do {
                    if (s[p] == '\n')
                        newline_at(lx, p);
                    p++;
                } while (p < n && is_space(s[p]));
                continue;
            }
            do {
                if (s[p] == '\n') {
                    newline_at(lx, p);
                    if ((p + 1 == n || s[p + 1] == '\n') && drop(r, p))
                        return SPLIT_ENOMEM;
                }
                p++;
            } while (p < n && is_space(s[p]));
            continue;
        }
        if (k & C_DIGIT) {
            token_at(lx, p);
            lx->last_line = lx->line;
            p = number_end(s, n, p);
            continue;
        }
        switch (c) {
        case '-':
            if (p + 1 < n && s[p + 1] == '-') {
                /* Dropped before a statement, sent inside one; it ends before CR or LF. */
                size_t q = p + 2;
                while (q < n && s[q] != '\n' && s[q] != '\r')
                    q++;
                if (lx->pending)
                    lx->last_line = lx->line;
                p = q;
                break;
            }
            token_at(lx, p++);
            lx->last_line = lx->line;
            break;

        case '/':
            if (p + 1 < n && s[p + 1] == '*') {
                size_t q = comment_end(s, n, p);
                if (q == SIZE_MAX)
                    return fail(lx, p, "unterminated /* comment");
                echo_at(lx, p);
                pass_lines(lx, p, q);
                lx->last_line = lx->line;
                p = q;
                break;
            }
            token_at(lx, p++);
            lx->last_line = lx->line;
            break;

        case '\'':
        case '"': {
            size_t q = quoted_end(s, n, p + 1, (unsigned char)c, 0);
            if (q == SIZE_MAX)
                return fail(lx, p,
                            c == '"' ? "unterminated quoted identifier"
                                     : "unterminated quoted string");
            token_at(lx, p);
            pass_lines(lx, p, q);
            lx->last_line = lx->line;
            p = q;
            break;
        }

        case '$': {
            size_t failed_end, dl = dolq_delim(s, n, p, &failed_end);
            token_at(lx, p);
            lx->last_line = lx->line;
            if (dl) {
                size_t q = dollar_end(s, n, p, dl);
                if (q == SIZE_MAX)
                    return fail(lx, p, "unterminated dollar-quoted string");
                pass_lines(lx, p, q);
                lx->last_line = lx->line;
                p = q;
            } else if (p + 1 < n && is_digit(s[p + 1])) {
                /* {param}, or {param_junk} with an identifier glued on. */
                size_t q = p + 1;
                while (q < n && is_digit(s[q]))
                    q++;
                if (q < n && is_ident_start(s[q]))
                    q = ident_end(s, n, q);
                p = q;
            } else {
                p++; /* {dolqfailed} gives back all but the $; or a lone $ */
            }
            break;
        }

        case '(':
            token_at(lx, p++);
            lx->last_line = lx->line;
            lx->paren++;
            break;

        case ')':
            token_at(lx, p++);
            lx->last_line = lx->line;
            if (lx->paren > 0)
                lx->paren--;
            break;

        case ';':
            /* Not a token: a statement of nothing but `;` is not sent (see splitter.h). */
            echo_at(lx, p++);
            lx->last_line = lx->line;
            lx->after_from = 0;
            if (lx->paren == 0 && lx->begin == 0) {
                struct split_stmt *st = finish(lx, p, &rc);
                if (rc)
                    return rc;
                if (st && st->kind == SPLIT_COPY) {
                    p = copy_data(lx, r->count - 1, p, &rc);
                    if (p == SIZE_MAX)
                        return rc;
                }
            }
            break;

        case '\\': {
            size_t end, word;
            if (p + 1 < n && (s[p + 1] == ';' || s[p + 1] == ':')) {
                end = word = p + 2;
            } else {
                const unsigned char *nl = memchr(s + p, '\n', n - p);
                end = nl ? (size_t)(nl - s) : n;
                if (end > p + 1 && s[end - 1] == '\r')
                    end--;
                word = p + 1;
                while (word < end && !is_space(s[word]) && s[word] != '\\')
                    word++;
            }
            if ((rc = meta(lx, p, end, word - p, &p)))
                return rc;
            break;
        }

        case ':': {
            /* psql's variable forms are single tokens (so `:{?begin}` hides its word). */
            size_t q = p + 1;
            token_at(lx, p);
            lx->last_line = lx->line;
            if (q < n && (s[q] == ':' || s[q] == '=')) {
                q++;
            } else if (q < n && is_var_char(s[q])) {
                while (q < n && is_var_char(s[q]))
                    q++;
            } else if (q < n && (s[q] == '\'' || s[q] == '"')) {
                size_t j = q + 1;
                while (j < n && is_var_char(s[j]))
                    j++;
                if (j > q + 1 && j < n && s[j] == s[q])
                    q = j + 1;
            } else if (q + 1 < n && s[q] == '{' && s[q + 1] == '?') {
                size_t j = q + 2;
                while (j < n && is_var_char(s[j]))
                    j++;
                if (j > q + 2 && j < n && s[j] == '}')
                    q = j + 1;
            }
            p = q;
            break;
        }

        case '.':
            token_at(lx, p);
            lx->last_line = lx->line;
            p = (p + 1 < n && is_digit(s[p + 1])) ? number_end(s, n, p) : p + 1;
            break;

        default:
            token_at(lx, p++);
            lx->last_line = lx->line;
            break;
        }
    }

    lx->p = n;
    lx->done = 1;
    struct split_stmt *st = finish(lx, n, &rc);
    if (rc)
        return rc;
    if (st && st->kind == SPLIT_COPY) {
        st->data_start = n;
        st->data_len = 0;
    }
    return SPLIT_OK;
}

/* Appends one token to the head being built; 0 when it is full. */
static int head_put(struct split_head *h, const unsigned char *w, size_t len, int lower) {
    size_t need = len + (h->len > 0);
    if (h->tokens >= h->max_tokens || h->len + need >= h->cap)
        return 0;
    if (h->len > 0)
        h->out[h->len++] = ' ';
    for (size_t i = 0; i < len; i++)
        h->out[h->len++] = (char)(lower && w[i] >= 'A' && w[i] <= 'Z' ? w[i] | 0x20 : w[i]);
    h->out[h->len] = '\0';
    h->tokens++;
    return 1;
}

int split_head(const char *text, size_t len, struct split_head *h) {
    const unsigned char *s = (const unsigned char *)text;
    size_t p = 0, n = len;
    h->len = 0, h->tokens = 0, h->first = SIZE_MAX;
    if (h->cap == 0)
        return 0;
    h->out[0] = '\0';
    while (p < n) {
        unsigned c = s[p];
        size_t start = p, end;
        if (is_space(c)) {
            p++;
            continue;
        }
        if (c == '-' && p + 1 < n && s[p + 1] == '-') {
            const unsigned char *nl = memchr(s + p, '\n', n - p);
            p = nl ? (size_t)(nl - s) + 1 : n;
            continue;
        }
        if (c == '/' && p + 1 < n && s[p + 1] == '*') {
            end = comment_end(s, n, p);
            if (end == SIZE_MAX)
                break;
            p = end;
            continue;
        }
        if (h->first == SIZE_MAX)
            h->first = start;
        int more;
        if ((c == 'e' || c == 'E') && p + 1 < n && s[p + 1] == '\'') {
            end = quoted_end(s, n, p + 2, '\'', 1);
            more = end != SIZE_MAX && head_put(h, (const unsigned char *)"'?'", 3, 0);
        } else if (c == '\'') {
            end = quoted_end(s, n, p + 1, '\'', 0);
            more = end != SIZE_MAX && head_put(h, (const unsigned char *)"'?'", 3, 0);
        } else if (c == '"') {
            end = quoted_end(s, n, p + 1, '"', 0);
            more = end != SIZE_MAX && head_put(h, s + p, end - p, 0);
        } else if (c == '$') {
            size_t failed_end, dl = dolq_delim(s, n, p, &failed_end);
            end = dl ? dollar_end(s, n, p, dl) : p + 1;
            more = end != SIZE_MAX && head_put(h, (const unsigned char *)"$?$", dl ? 3 : 1, 0);
        } else if (is_ident_start(c)) {
            end = ident_end(s, n, p + 1);
            more = head_put(h, s + p, end - p, 1);
        } else if (is_digit(c)) {
            end = p + 1;
            while (end < n && is_digit(s[end]))
                end++;
            more = head_put(h, s + p, end - p, 0);
        } else {
            end = p + 1;
            more = head_put(h, s + p, 1, 0);
        }
        if (!more)
            break;
        p = end;
    }
    return (int)h->tokens;
}

int split_sql(const char *text, size_t len, struct split_result *out) {
    memset(out, 0, sizeof *out);
    struct lexer lx;
    memset(&lx, 0, sizeof lx);
    lx.s = (const unsigned char *)text;
    lx.n = len;
    lx.r = out;
    lx.line = 1;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        out->bom = 3;
    lx.bol = lx.p = out->bom;
    const char *nul = len ? memchr(text, '\0', len) : NULL;
    if (nul) {
        size_t at = (size_t)(nul - text);
        pass_lines(&lx, 0, at);
        return fail(&lx, at, "NUL byte in input");
    }
    return lex(&lx);
}

size_t split_text(const char *text, const struct split_result *r, const struct split_stmt *s,
                  char *out) {
    size_t o = 0, pos = s->start, end = s->start + s->len;
    for (size_t k = s->drop_first; k < s->drop_first + s->drop_count; k++) {
        size_t d = r->drops[k];
        memcpy(out + o, text + pos, d - pos);
        o += d - pos;
        pos = d + 1;
    }
    memcpy(out + o, text + pos, end - pos);
    return o + (end - pos);
}

void split_free(struct split_result *r) {
    free(r->stmts);
    free(r->drops);
    r->stmts = NULL;
    r->drops = NULL;
    r->count = r->cap = r->ndrops = r->drops_cap = 0;
}

struct split_stream {
    struct lexer lx;
    struct split_result r;
    size_t next; /* the statement of r handed out next */
};

struct split_stream *split_stream_new(const char *text, size_t len,
                                      void (*progress)(void *ctx, size_t offset), void *ctx) {
    struct split_stream *ss = calloc(1, sizeof *ss);
    if (!ss)
        return NULL;
    ss->lx.s = (const unsigned char *)text;
    ss->lx.n = len;
    ss->lx.r = &ss->r;
    ss->lx.line = 1;
    ss->lx.stepwise = 1;
    ss->lx.progress = progress;
    ss->lx.progress_ctx = ctx;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        ss->r.bom = 3;
    ss->lx.bol = ss->lx.p = ss->r.bom;
    return ss;
}

const struct split_stmt *split_stream_next(struct split_stream *ss, int *rc) {
    *rc = SPLIT_OK;
    if (ss->next < ss->r.count)
        return &ss->r.stmts[ss->next++];
    /* Every statement handed out is used: forget them (no statement is pending between
     * two, so no drop belongs to the next one yet). */
    ss->r.count = ss->r.ndrops = ss->next = 0;
    while (!ss->lx.done && ss->r.count == 0) {
        if ((*rc = lex(&ss->lx)))
            return NULL;
    }
    if (ss->next < ss->r.count)
        return &ss->r.stmts[ss->next++];
    return NULL;
}

const struct split_result *split_stream_result(const struct split_stream *ss) {
    return &ss->r;
}

void split_stream_free(struct split_stream *ss) {
    if (ss) {
        split_free(&ss->r);
        free(ss);
    }
}
