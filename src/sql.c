/* moonshift.sql: cuts a migration into the statements psql would send (see splitter.h). */
#include <lauxlib.h>
#include <lua.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "modules.h"
#include "splitter.h"
#include "support.h"

#define RESULT_META "moonshift.sql.result"
#define ERROR_META "moonshift.sql.error"
#define STREAM_META "moonshift.sql.stream"

/* A large script is read through a read-only mapping, and the pages behind what was used
 * are given back every DROP_EVERY bytes: resident memory stays a few megabytes whatever the
 * file's size (the kernel reads a dropped page again from its cache if it is touched). */
#define DROP_EVERY (4 * 1024 * 1024)
#define COPY_PIECE (1024 * 1024)

/* The splitter's arrays live in a userdata while the Lua tables are built, so a memory
 * error raised by Lua frees them from __gc instead of leaking them. */
struct result {
    struct split_result r;
    int live;
};

static void release(struct result *res) {
    if (res->live) {
        split_free(&res->r);
        res->live = 0;
    }
}

static int result_gc(lua_State *L) {
    release(luaL_checkudata(L, 1, RESULT_META));
    return 0;
}

static int error_tostring(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "line");
    lua_getfield(L, 1, "message"); // [err, line, message]
    const char *message = luaL_tolstring(L, 3, NULL);
    const char *line = luaL_tolstring(L, 2, NULL);
    lua_pushfstring(L, "line %s: %s", line, message);
    return 1;
}

/* Field names and kind strings sit on the stack from index 3 on, so each field is a
 * pushvalue and a rawset instead of a C-string lookup. */
enum {
    K_TEXT = 3,
    K_LINE,
    K_COLUMN,
    K_END_LINE,
    K_KIND,
    K_COPY_DATA,
    K_META,
    V_SQL,
    V_COPY,
    V_META,
    K_DATA_LINE
};
static const char *const stack_strings[] = {"text",      "line", "column", "end_line", "kind",
                                            "copy_data", "meta", "sql",    "copy",     "meta", "data_line"};

/* Pushes a split error: { message, line, column } with its __tostring. */
static void push_error(lua_State *L, const struct split_error *e) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, e->message);
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, (lua_Integer)e->line);
    lua_setfield(L, -2, "line");
    lua_pushinteger(L, (lua_Integer)e->column);
    lua_setfield(L, -2, "column");
    luaL_setmetatable(L, ERROR_META);
}

static void set_integer(lua_State *L, int key, size_t v) {
    lua_pushvalue(L, key);
    lua_pushinteger(L, (lua_Integer)v);
    lua_rawset(L, -3);
}

static void push_statement(lua_State *L, const char *text, const struct split_result *r,
                           const struct split_stmt *st) {
    lua_createtable(L, 0, 6); // [.., stmt]
    lua_pushvalue(L, K_TEXT);
    if (st->drop_count == 0) {
        lua_pushlstring(L, text + st->start, st->len);
    } else {
        luaL_Buffer b;
        char *out = luaL_buffinitsize(L, &b, st->len);
        luaL_pushresultsize(&b, split_text(text, r, st, out));
    }
    lua_rawset(L, -3);
    set_integer(L, K_LINE, st->line);
    set_integer(L, K_COLUMN, st->column);
    set_integer(L, K_END_LINE, st->end_line);
    lua_pushvalue(L, K_KIND);
    lua_pushvalue(L, st->kind == SPLIT_COPY ? V_COPY : st->kind == SPLIT_META ? V_META : V_SQL);
    lua_rawset(L, -3);
    if (st->kind == SPLIT_COPY) {
        lua_pushvalue(L, K_COPY_DATA);
        lua_pushlstring(L, text + st->data_start, st->data_len);
        lua_rawset(L, -3);
        set_integer(L, K_DATA_LINE, st->data_line ? st->data_line : st->end_line + 1);
    } else if (st->kind == SPLIT_META) {
        lua_pushvalue(L, K_META);
        lua_pushlstring(L, text + st->start, st->word_len);
        lua_rawset(L, -3);
    }
}

/* Builds the statement list from the result at index 2 (text at 1), under lua_pcall. */
static int build_list(lua_State *L) {
    const char *text = lua_tostring(L, 1);
    struct result *res = lua_touserdata(L, 2);
    luaL_checkstack(L, (int)(sizeof stack_strings / sizeof *stack_strings) + 8, NULL);
    for (size_t i = 0; i < sizeof stack_strings / sizeof *stack_strings; i++)
        lua_pushstring(L, stack_strings[i]); // [text, res, keys and kinds...]
    lua_createtable(L, res->r.count > 0x7fffffff ? 0x7fffffff : (int)res->r.count, 0);
    for (size_t i = 0; i < res->r.count; i++) { // [text, res, strings..., list]
        push_statement(L, text, &res->r, &res->r.stmts[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* sql.split(text) -> { {text, line, column, end_line, kind, copy_data?, meta?}, ... }
 *                  | nil, {message, line, column} */
static int sql_split(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    struct result *res = lua_newuserdatauv(L, sizeof *res, 0); // [text, res]
    res->live = 0;
    luaL_setmetatable(L, RESULT_META);
    int rc = split_sql(text, len, &res->r);
    res->live = 1;
    if (rc == SPLIT_ENOMEM)
        return luaL_error(L, "not enough memory to split %I bytes of SQL", (lua_Integer)len);
    if (rc == SPLIT_EINPUT) {
        lua_pushnil(L);
        push_error(L, &res->r.error);
        release(res);
        return 2;
    }
    /* Nothing built here is garbage, so the collector would only walk the growing list
     * again and again: pause it, and restart it whatever happens. */
    int collecting = lua_gc(L, LUA_GCISRUNNING);
    if (collecting)
        lua_gc(L, LUA_GCSTOP);
    lua_pushcfunction(L, build_list);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    int status = lua_pcall(L, 2, 1, 0); // [text, res, list or error]
    if (collecting)
        lua_gc(L, LUA_GCRESTART);
    release(res);
    if (status != LUA_OK)
        return lua_error(L);
    return 1;
}

/* sql.head(text [, max_tokens]) -> head, offset of its first token (1-based) | "", nil
 * The statement's first words as splitter.h's split_head describes them: the one input of
 * every statement classifier (lua/moonshift/statement.lua). */
static int sql_head(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_Integer max = luaL_optinteger(L, 2, 16);
    luaL_argcheck(L, max > 0 && max <= 256, 2, "between 1 and 256 tokens");
    char buf[1024];
    struct split_head h = {.out = buf, .cap = sizeof buf, .max_tokens = (size_t)max};
    split_head(text, len, &h);
    lua_pushlstring(L, buf, h.len);
    if (h.first == SIZE_MAX)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)h.first + 1);
    return 2;
}


struct stream {
    struct split_stream *ss;
    const char *base; /* the mapping, or "" for an empty file */
    size_t size;
    size_t dropped;                      /* the sweep's last drop */
    size_t copy_pos, copy_end;           /* COPY data not yet handed out */
};

static void drop_before(struct stream *st, size_t upto) {
    if (st->size == 0 || upto < st->dropped + DROP_EVERY)
        return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = upto / page * page;
    if (len > 0)
        madvise((void *)st->base, len, MADV_DONTNEED);
    st->dropped = upto;
}

static void on_progress(void *ctx, size_t offset) {
    drop_before(ctx, offset);
}

static void stream_release(struct stream *st) {
    split_stream_free(st->ss);
    st->ss = NULL;
    if (st->size > 0 && st->base)
        munmap((void *)st->base, st->size);
    st->base = NULL;
    st->size = 0;
}

static struct stream *check_stream(lua_State *L) {
    struct stream *st = luaL_checkudata(L, 1, STREAM_META);
    if (!st->ss)
        luaL_error(L, "attempt to use a closed SQL stream");
    return st;
}

static int stream_gc(lua_State *L) {
    stream_release(luaL_checkudata(L, 1, STREAM_META));
    return 0;
}

/* sql.stream(path) -> stream | nil, msg, code: the statements of a file one at a time,
 * as sql.split lists them, without holding the file or the list. */
static int sql_stream(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct stream *st = lua_newuserdatauv(L, sizeof *st, 0);
    memset(st, 0, sizeof *st);
    luaL_setmetatable(L, STREAM_META);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return support_error(L, errno, path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return support_error(L, err, path);
    }
    st->base = "";
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int err = errno;
            close(fd);
            st->base = NULL;
            return support_error(L, err, path);
        }
        st->base = m;
        st->size = (size_t)sb.st_size;
        madvise(m, st->size, MADV_SEQUENTIAL);
    }
    close(fd);
    st->ss = split_stream_new(st->base, st->size, on_progress, st);
    if (!st->ss)
        return luaL_error(L, "not enough memory to split %s", path);
    return 1;
}

/* stream:next() -> statement (as in sql.split, with data_line for a COPY; its data come from
 * stream:copy_data()) | nil at the end | nil, err {message, line, column} */
static int stream_next(lua_State *L) {
    struct stream *st = check_stream(L);
    st->copy_pos = st->copy_end = 0;
    int rc;
    const struct split_stmt *s = split_stream_next(st->ss, &rc);
    if (rc == SPLIT_ENOMEM)
        return luaL_error(L, "not enough memory to split SQL");
    if (rc == SPLIT_EINPUT) {
        lua_pushnil(L);
        push_error(L, &split_stream_result(st->ss)->error);
        return 2;
    }
    if (!s)
        return 0;
    luaL_checkstack(L, (int)(sizeof stack_strings / sizeof *stack_strings) + 8, NULL);
    lua_settop(L, 1);
    lua_pushnil(L); // [stream, nil]: push_statement finds its strings from index 3 on
    for (size_t i = 0; i < sizeof stack_strings / sizeof *stack_strings; i++)
        lua_pushstring(L, stack_strings[i]);
    /* A COPY's data are read with copy_data(), not kept on the statement. */
    struct split_stmt head = *s;
    if (head.kind == SPLIT_COPY)
        head.data_len = 0;
    push_statement(L, st->base, split_stream_result(st->ss), &head); // [.., stmt]
    if (s->kind == SPLIT_COPY) {
        lua_pushnil(L);
        lua_setfield(L, -2, "copy_data");
        st->copy_pos = s->data_start;
        st->copy_end = s->data_start + s->data_len;
    }
    drop_before(st, s->start);
    return 1;
}

/* stream:copy_data() -> the next piece of the current COPY's data | nil when all were read */
static int stream_copy_data(lua_State *L) {
    struct stream *st = check_stream(L);
    if (st->copy_pos >= st->copy_end)
        return 0;
    if (st->copy_pos < st->dropped)
        st->dropped = st->copy_pos; /* a new sweep over pages the scan dropped */
    size_t n = st->copy_end - st->copy_pos;
    if (n > COPY_PIECE)
        n = COPY_PIECE;
    lua_pushlstring(L, st->base + st->copy_pos, n);
    st->copy_pos += n;
    drop_before(st, st->copy_pos);
    return 1;
}

static int stream_close(lua_State *L) {
    stream_release(luaL_checkudata(L, 1, STREAM_META));
    return 0;
}

static void create_meta(lua_State *L) {
    static const luaL_Reg result_meta[] = {{"__gc", result_gc}, {NULL, NULL}};
    static const luaL_Reg error_meta[] = {{"__tostring", error_tostring}, {NULL, NULL}};
    luaL_newmetatable(L, RESULT_META);
    luaL_setfuncs(L, result_meta, 0);
    lua_pop(L, 1);
    luaL_newmetatable(L, ERROR_META);
    luaL_setfuncs(L, error_meta, 0);
    lua_pop(L, 1);
    static const luaL_Reg stream_methods[] = {
        {"next", stream_next}, {"copy_data", stream_copy_data}, {"close", stream_close},
        {NULL, NULL}};
    static const luaL_Reg stream_meta[] = {
        {"__gc", stream_gc}, {"__close", stream_gc}, {"__index", NULL}, {NULL, NULL}};
    luaL_newmetatable(L, STREAM_META);
    luaL_setfuncs(L, stream_meta, 0);
    luaL_newlib(L, stream_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

int luaopen_moonshift_sql(lua_State *L) {
    static const luaL_Reg funcs[] = {{"split", sql_split}, {"head", sql_head}, {"stream", sql_stream},
                                     {NULL, NULL}};
    create_meta(L);
    luaL_newlib(L, funcs);
    return 1;
}
