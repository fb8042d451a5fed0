-- wrk script: a different bearer token on every request.
-- Usage: wrk ... -s bench/fresh.lua URL -- TOKENS_FILE
-- The tokens file holds one JWT per line; they are used in order and the
-- list wraps around only if the run outlasts it (run.sh flags that case,
-- because a wrapped token may then be served from a verification cache).
local tokens = {}
local n = 0
local i = 0

function init(args)
   local file = args[1]
   if not file then
      error("fresh.lua: pass the tokens file after --")
   end
   for line in io.lines(file) do
      if #line > 0 then
         n = n + 1
         tokens[n] = "Bearer " .. line
      end
   end
   if n == 0 then
      error("fresh.lua: no tokens in " .. file)
   end
end

function request()
   i = i + 1
   if i > n then i = 1 end
   return wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
end
