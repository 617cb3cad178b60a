-- `moonshift check`: exit 0 when up to date, 3 when migrations are pending, 9 when refused.
local status = require("moonshift.commands.status")
local errors = require("moonshift.errors")

local check = { summary = "Exit 0 if up to date, 3 if migrations are pending, 9 if refused.",
  uses = { "connection" }, arguments = status.arguments }

function check.options(args)
  local o = status.options(args)
  o.quiet = args.quiet
  return o
end

--- Validates the files and compares them with the database.
-- @return status with `verdict` ("ok", "pending", "refused") | nil, err
function check.run(cfg, ui, opts)
  return status.run(cfg, ui, opts) -- its verdict is check's answer
end

function check.print(ui, st, opts)
  if not opts.quiet then status.print(ui, st, opts) end -- -q: the exit code alone
  return errors.EXIT[st.verdict] or 0
end

return check
