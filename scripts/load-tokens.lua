-- wrk script for scripts/load: every request carries a different token
-- from a pre-minted list, so the gateway sees each one for the first time
-- (until the list wraps around).
--
--   wrk -t THREADS -s scripts/load-tokens.lua URL -- TOKENS ORIGIN THREADS OFFSET
--
-- TOKENS is a file with one token a line, ORIGIN the Origin header sent
-- with each request, THREADS the -t given to wrk (each thread takes every
-- THREADS-th token), OFFSET where in the list this run starts (so that
-- runs in a row do not repeat each other's tokens).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function init(args)
   tokens = {}
   for line in io.lines(args[1]) do
      tokens[#tokens + 1] = line
   end
   origin = args[2]
   nthreads = tonumber(args[3])
   index = tonumber(args[4] or "0") + id - 1
end

function request()
   local token = tokens[(index % #tokens) + 1]
   index = index + nthreads
   return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. token, ["Origin"] = origin})
end

