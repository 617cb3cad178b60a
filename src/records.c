/* moonshift.records: lines of tab-separated values as Lua tables, for the caches that
 * source.lua reads on every command. In C because a set of 10,000 migrations is a line
 * each: string.match with a dozen captures and the Lua loop around it cost ~3 us a line,
 * this a fraction of that. */
#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#include "modules.h"

#define MAX_FIELDS 64

/* records.parse(data, init, fields) -> list, next | nil, line
 * Reads the lines from byte `init` of data to its end, or to an empty line (`next` is the
 * byte after it). Each line holds #fields values separated by tabs and becomes a table with
 * fields[i] = value; an empty value is left out. A line with another number of values, or
 * without its newline, returns nil and its number (1 = the line at init). */
static int records_parse(lua_State *L) {
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    lua_Integer init = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    int nfields = (int)lua_rawlen(L, 3);
    luaL_argcheck(L, init >= 1 && (size_t)init <= len + 1, 2, "out of range");
    luaL_argcheck(L, nfields > 0 && nfields <= MAX_FIELDS, 3, "1 to 64 field names expected");
    lua_settop(L, 3);
    luaL_checkstack(L, nfields + 4, NULL);
    for (int i = 1; i <= nfields; i++) /* the names at 4 .. 3 + nfields */
        lua_rawgeti(L, 3, i);
    lua_newtable(L);
    int list = lua_gettop(L);
    const char *p = data + init - 1, *end = data + len;
    lua_Integer n = 0;
    while (p < end && *p != '\n') {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        int k = 0;
        if (eol != NULL) {
            lua_createtable(L, 0, nfields);
            for (const char *f = p;; k++) {
                const char *tab = memchr(f, '\t', (size_t)(eol - f));
                const char *stop = tab ? tab : eol;
                if (k < nfields && stop > f) {
                    lua_pushvalue(L, 4 + k);
                    lua_pushlstring(L, f, (size_t)(stop - f));
                    lua_rawset(L, -3);
                }
                if (tab == NULL)
                    break;
                f = tab + 1;
            }
        }
        if (eol == NULL || k + 1 != nfields) {
            lua_pushnil(L);
            lua_pushinteger(L, n + 1);
            return 2;
        }
        lua_rawseti(L, list, ++n);
        p = eol + 1;
    }
    lua_pushinteger(L, (lua_Integer)(p < end ? p - data + 2 : p - data + 1));
    return 2;
}

int luaopen_moonshift_records(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"parse", records_parse},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
