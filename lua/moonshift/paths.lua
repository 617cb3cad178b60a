-- Paths as an operator reads them: relative to the current directory when under it.
local fs = require("moonshift.fs")

local paths = {}

local working_dir -- it never changes during a run: resolved once

--- A path as an operator wants to read it: relative to the current directory when under it.
-- @param path string|nil
-- @return string|nil
function paths.display(path)
  working_dir = working_dir or fs.realpath(".")
  local wd = working_dir
  if path and wd and path:sub(1, #wd + 1) == wd .. "/" then return path:sub(#wd + 2) end
  return path
end

return paths
