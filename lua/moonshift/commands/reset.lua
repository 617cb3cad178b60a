-- `moonshift reset`: drop, then up (development and CI).
local drop = require("moonshift.commands.drop")
local up = require("moonshift.commands.up")

local reset = { summary = "Drop everything, then apply every migration (development and CI).",
  uses = { "connection", "lock", "timeouts", "log" } }

reset.arguments = drop.arguments
reset.options = drop.options

--- drop.run, then up.run with the same confirmation.
-- @return up's result | nil, err
function reset.run(cfg, ui, opts)
  local dropped, err = drop.run(cfg, ui, opts)
  if not dropped then return nil, err end
  drop.print(ui, dropped)
  return up.run(cfg, ui, { auto_confirm = true })
end

reset.print = up.print

return reset
