-- `moonshift demo`: the sample project on a throwaway database.
local demo_mod = require("moonshift.demo")

local demo = { summary = "Run the sample project on a throwaway database.", uses = {},
  no_config = true }

function demo.run(_, ui)
  return demo_mod.run(ui)
end

return demo
