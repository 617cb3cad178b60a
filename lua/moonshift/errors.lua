-- Errors that reach the command line: a kind (mapped to an exit code in cli.lua) and a message.
local errors = {}

local Error = {}
Error.__index = Error
Error.__tostring = function(e) return e.message end

--- Exit codes by kind; documented in moonshift(1).
errors.EXIT = {
  ok = 0, internal = 1, usage = 2, pending = 3, connect = 4, lock = 5, sql = 6, hook = 7,
  verify = 8, refused = 9, backup = 10, interrupted = 130,
}

--- A new error.
-- @param kind string: one of the keys of errors.EXIT
-- @param message string: what an operator reads
-- @param fields table|nil: extra fields (file, line, sqlstate, ...)
-- @return table
function errors.new(kind, message, fields)
  assert(errors.EXIT[kind], "unknown error kind " .. tostring(kind))
  local e = setmetatable(fields or {}, Error)
  e.kind, e.message = kind, message
  return e
end

--- True when v is an error made by errors.new.
function errors.is(v)
  return getmetatable(v) == Error
end

--- Wraps any failure value (string, pg error table, error) as an error of `kind`,
-- keeping an existing kind.
function errors.wrap(kind, v, prefix)
  if errors.is(v) then
    if prefix then v.message = prefix .. ": " .. v.message end
    return v
  end
  local msg = type(v) == "table" and (v.message or tostring(v)) or tostring(v)
  return errors.new(kind, prefix and (prefix .. ": " .. msg) or msg,
    type(v) == "table" and { cause = v } or nil)
end

return errors
