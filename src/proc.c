/* moonshift.proc (placeholder until the binding lands). */
#include <lauxlib.h>
#include <lua.h>

int luaopen_moonshift_proc(lua_State *L);

int luaopen_moonshift_proc(lua_State *L) {
    lua_newtable(L);
    return 1;
}
