/* moonshift.pg (placeholder until the binding lands). */
#include <lauxlib.h>
#include <lua.h>

int luaopen_moonshift_pg(lua_State *L);

int luaopen_moonshift_pg(lua_State *L) {
    lua_newtable(L);
    return 1;
}
