-- `moonshift demo`: the sample project on a throwaway database.
local demo = {}

function demo.run(ui)
  ui:result("demo: not yet (the sample project arrives with the Lua hooks issue)")
  return 0
end

return demo
