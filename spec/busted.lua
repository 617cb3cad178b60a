-- Runs busted inside the moonshift binary (moonshift --run-lua spec/busted.lua), so the
-- specs load the real bindings and the embedded Lua modules.
require("busted.runner")({ standalone = false })
