/* moonshift.redact: passwords out of anything we print or log. */
#include "redact.h"

#include <ctype.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "modules.h"

static const char MASK[] = "***";

static int is_space(char c) { return isspace((unsigned char)c) != 0; }

/* End of a token that cannot hold whitespace or quotes: a URI. */
static size_t token_end(const char *s, size_t len, size_t i) {
    while (i < len && !is_space(s[i]) && s[i] != '"' && s[i] != '\'')
        i++;
    return i;
}

/* If s[i..] is "password" (any case) followed by optional blanks and '=', returns the
 * offset just after the '=' (and blanks after it); otherwise 0. */
static size_t password_value_start(const char *s, size_t len, size_t i) {
    static const char key[] = "password";
    size_t k = sizeof key - 1;
    if (len - i < k || strncasecmp(s + i, key, k) != 0)
        return 0;
    size_t j = i + k;
    while (j < len && (s[j] == ' ' || s[j] == '\t'))
        j++;
    if (j >= len || s[j] != '=')
        return 0;
    j++;
    while (j < len && (s[j] == ' ' || s[j] == '\t'))
        j++;
    return j;
}

/* End of a keyword value at s[j]: a quoted conninfo value ('...' with \' escapes) or a
 * bare word ending at whitespace, '&' (URI query) or a closing quote. */
static size_t value_end(const char *s, size_t len, size_t j) {
    if (j < len && s[j] == '\'') {
        j++;
        while (j < len && s[j] != '\'') {
            if (s[j] == '\\' && j + 1 < len)
                j++;
            j++;
        }
        return j < len ? j + 1 : len;
    }
    while (j < len && !is_space(s[j]) && s[j] != '&' && s[j] != '"' && s[j] != '\'')
        j++;
    return j;
}

struct buf {
    char *data;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *p, size_t n) {
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap : 64);
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

char *redact_secrets(const char *in, size_t len, size_t *out_len) {
    struct buf b = {NULL, 0, 0, 0};
    put(&b, "", 0);
    size_t i = 0;
    while (i < len) {
        size_t v = password_value_start(in, len, i);
        if (v) {
            size_t end = value_end(in, len, v);
            put(&b, in + i, v - i);
            if (end > v)
                put(&b, MASK, sizeof MASK - 1);
            i = end;
            continue;
        }
        if (i + 3 <= len && memcmp(in + i, "://", 3) == 0) {
            /* scheme://user:secret@host: the userinfo ends at the token's last '@'. */
            size_t start = i + 3, end = token_end(in, len, start);
            size_t at = end;
            for (size_t k = start; k < end; k++)
                if (in[k] == '@')
                    at = k;
            const char *colon = at < end ? memchr(in + start, ':', at - start) : NULL;
            if (colon) {
                size_t c = (size_t)(colon - in);
                put(&b, in + i, c + 1 - i);
                put(&b, MASK, sizeof MASK - 1);
                i = at; /* continue with '@host...', which may hold password= too */
                continue;
            }
            put(&b, in + i, 3);
            i += 3;
            continue;
        }
        put(&b, in + i, 1);
        i++;
    }
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    if (out_len)
        *out_len = b.len;
    return b.data;
}

/* Holds a malloc'd result until Lua owns a copy: pushing may raise. */
static int box_gc(lua_State *L) {
    char **box = luaL_checkudata(L, 1, "moonshift.redact.box");
    free(*box);
    *box = NULL;
    return 0;
}

/* redact.secrets(s) -> s with passwords replaced by *** */
static int redact_lsecrets(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char **box = lua_newuserdatauv(L, sizeof *box, 0); // [s, box]
    *box = NULL;
    luaL_setmetatable(L, "moonshift.redact.box");
    size_t out_len;
    *box = redact_secrets(s, len, &out_len);
    if (!*box)
        return luaL_error(L, "not enough memory");
    lua_pushlstring(L, *box, out_len);
    free(*box);
    *box = NULL;
    return 1;
}

int luaopen_moonshift_redact(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"secrets", redact_lsecrets},
        {NULL, NULL},
    };
    luaL_newmetatable(L, "moonshift.redact.box");
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    return 1;
}
