-- `moonshift backup`: a pg_dump of the database now, checked with pg_restore --list.
local session = require("moonshift.session")
local backup_mod = require("moonshift.backup")

local backup = { summary = "pg_dump the database now (custom format, checked with " ..
  "pg_restore --list).", uses = { "connection" } }

--- A pg_dump of the database now, checked with pg_restore --list.
-- @return { path, size, elapsed_ms, restore_command } | nil, err (kind backup)
function backup.run(cfg, ui)
  local ok, err = backup_mod.ready(cfg)
  if not ok then return nil, err end
  return session.with(cfg, ui, {}, function(s) return s:backup() end)
end

function backup.print(ui, res)
  ui:result(res.path)
  ui:info("restore with: " .. res.restore_command)
  return 0
end

return backup
