/* libFuzzer target for the splitter: no crash, no out-of-bounds read, every byte accounted
 * for (statements, COPY data, `\.` lines, and gaps holding only what psql skips), correct
 * lines and columns, and each statement's text splitting back into itself. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "splitter.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__);                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct range {
    size_t start, end;
};

static int by_start(const void *a, const void *b) {
    const struct range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* A gap may hold only whitespace, `;`, `--` comments and closed block comments: what psql
 * drops, or sends without effect. Written apart from the splitter, on purpose. */
static void check_gap(const uint8_t *s, size_t from, size_t to) {
    size_t i = from;
    while (i < to) {
        uint8_t c = s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == ';') {
            i++;
        } else if (c == '-' && i + 1 < to && s[i + 1] == '-') {
            while (i < to && s[i] != '\n' && s[i] != '\r')
                i++;
        } else if (c == '/' && i + 1 < to && s[i + 1] == '*') {
            size_t depth = 1;
            i += 2;
            while (depth > 0) {
                CHECK(i + 1 < to);
                if (s[i] == '/' && s[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (s[i] == '*' && s[i + 1] == '/') {
                    depth--;
                    i += 2;
                } else {
                    i++;
                }
            }
        } else {
            fprintf(stderr, "unexpected byte 0x%02x at %zu in a gap [%zu, %zu)\n", c, i, from, to);
            abort();
        }
    }
}

static void check_position(const uint8_t *s, size_t bom, size_t pos, size_t line, size_t column) {
    size_t l = 1, bol = bom;
    for (size_t i = 0; i < pos; i++)
        if (s[i] == '\n') {
            l++;
            bol = i + 1;
        }
    CHECK(line == l);
    CHECK(column == (pos >= bol ? pos - bol + 1 : 1));
}

/* A statement's text, split on its own, is one statement with the same text and kind. */
static void check_resplit(const char *text, size_t len, enum split_kind kind) {
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        return; /* a BOM is only skipped at the start of a file */
    struct split_result r;
    int rc = split_sql(text, len, &r);
    CHECK(rc == SPLIT_OK);
    CHECK(r.count == 1);
    CHECK(r.stmts[0].kind == kind);
    CHECK(r.stmts[0].start == 0 && r.stmts[0].len == len);
    CHECK(r.stmts[0].drop_count == 0);
    CHECK(r.stmts[0].line == 1 && r.stmts[0].column == 1);
    if (kind == SPLIT_COPY)
        CHECK(r.stmts[0].data_len == 0 && r.stmts[0].term_len == 0);
    split_free(&r);
}

/* split_head, what every statement classifier reads: bounded, terminated, lowercase words
 * and single spaces, its first token inside the input. */
static void check_head(const char *text, size_t size) {
    char buf[64];
    struct split_head h = {.out = buf, .cap = sizeof buf, .max_tokens = 8};
    split_head(text, size, &h);
    CHECK(h.len < sizeof buf && buf[h.len] == '\0' && h.tokens <= 8);
    CHECK(h.first == SIZE_MAX || h.first < size);
    CHECK(h.len == 0 || (buf[0] != ' ' && buf[h.len - 1] != ' '));
}

/* split_stream_next() hands out what split_sql() listed, and fails where it failed. */
static void check_stream(const char *text, size_t size, const struct split_result *r, int rc) {
    if (size && memchr(text, '\0', size))
        return; /* the streaming caller checks for NUL bytes first */
    struct split_stream *ss = split_stream_new(text, size, NULL, NULL);
    CHECK(ss != NULL);
    size_t i = 0;
    int src;
    const struct split_stmt *st;
    while ((st = split_stream_next(ss, &src)) != NULL) {
        CHECK(i < r->count);
        const struct split_stmt *want = &r->stmts[i++];
        CHECK(st->kind == want->kind && st->start == want->start && st->len == want->len);
        CHECK(st->line == want->line && st->column == want->column);
        CHECK(st->end_line == want->end_line && st->word_len == want->word_len);
        CHECK(st->data_start == want->data_start && st->data_len == want->data_len);
        CHECK(st->term_len == want->term_len && st->data_line == want->data_line);
        CHECK(st->drop_count == want->drop_count);
        const struct split_result *sr = split_stream_result(ss);
        for (size_t k = 0; k < st->drop_count; k++)
            CHECK(sr->drops[st->drop_first + k] == r->drops[want->drop_first + k]);
    }
    /* On an error split_sql() also keeps a COPY whose data failed (and a meta-command on its
     * line); the stream does not hand those out. */
    CHECK(src == rc && (i == r->count || (rc == SPLIT_EINPUT && i + 2 >= r->count)));
    if (rc == SPLIT_EINPUT) {
        const struct split_error *e = &split_stream_result(ss)->error;
        CHECK(e->offset == r->error.offset && e->line == r->error.line);
        CHECK(e->column == r->error.column && strcmp(e->message, r->error.message) == 0);
    }
    split_stream_free(ss);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    check_head(text, size);
    struct split_result r;
    int rc = split_sql(text, size, &r);
    CHECK(rc == SPLIT_OK || rc == SPLIT_EINPUT);
    check_stream(text, size, &r, rc);
    if (rc == SPLIT_EINPUT) {
        CHECK(r.error.message != NULL);
        CHECK(r.error.offset < size);
        check_position(data, r.bom, r.error.offset, r.error.line, r.error.column);
        split_free(&r);
        return 0;
    }
    CHECK(r.bom == 0 || (r.bom == 3 && size >= 3));

    struct range *ranges = malloc((2 * r.count + 1) * sizeof *ranges);
    CHECK(ranges != NULL);
    size_t nr = 0, drops_seen = 0;
    for (size_t i = 0; i < r.count; i++) {
        const struct split_stmt *st = &r.stmts[i];
        CHECK(st->len > 0 && st->start >= r.bom && st->start + st->len <= size);
        check_position(data, r.bom, st->start, st->line, st->column);
        CHECK(st->end_line >= st->line);
        ranges[nr++] = (struct range){st->start, st->start + st->len};
        CHECK(st->drop_first == drops_seen);
        drops_seen += st->drop_count;
        for (size_t k = st->drop_first; k < st->drop_first + st->drop_count; k++) {
            size_t d = r.drops[k];
            CHECK(d >= st->start && d < st->start + st->len && data[d] == '\n');
            CHECK(k == st->drop_first || d > r.drops[k - 1]);
        }
        if (st->kind == SPLIT_META) {
            CHECK(data[st->start] == '\\');
            CHECK(st->word_len >= 1 && st->word_len <= st->len);
            CHECK(memchr(data + st->start, '\n', st->len) == NULL);
            continue;
        }
        if (st->kind == SPLIT_COPY) {
            size_t end = st->data_start + st->data_len + st->term_len;
            CHECK(st->data_start >= st->start + st->len && end <= size);
            if (st->data_len + st->term_len > 0) {
                CHECK(st->data_start > 0 && data[st->data_start - 1] == '\n');
                ranges[nr++] = (struct range){st->data_start, end};
            }
            if (st->term_len)
                CHECK(data[st->data_start + st->data_len] == '\\' &&
                      data[st->data_start + st->data_len + 1] == '.' && data[end - 1] == '\n');
        }
        char *buf = malloc(st->len);
        CHECK(buf != NULL);
        size_t n = split_text(text, &r, st, buf);
        CHECK(n == st->len - st->drop_count);
        check_resplit(buf, n, st->kind);
        free(buf);
    }
    CHECK(drops_seen == r.ndrops);

    /* The pieces do not overlap; what lies between them is only what psql skips. */
    qsort(ranges, nr, sizeof *ranges, by_start);
    size_t pos = r.bom;
    for (size_t i = 0; i < nr; i++) {
        CHECK(ranges[i].start >= pos);
        check_gap(data, pos, ranges[i].start);
        pos = ranges[i].end;
    }
    check_gap(data, pos, size);
    free(ranges);
    split_free(&r);
    return 0;
}
