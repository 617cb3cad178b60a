std = "lua54"
max_line_length = 100
files["spec"] = { std = "+busted", max_line_length = 120 }
exclude_files = { "build", "build-asan", "build-fuzz" }
self = false
files["migrate.lua"] = { read_globals = { "env" } }
