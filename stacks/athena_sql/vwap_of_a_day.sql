-- A day's volume-weighted average price of one symbol: quote volume over base volume, both exact sums.
SELECT symbol, day, count(*) AS trades, sum(quantity) AS volume, sum(quote_quantity) AS quote_volume,
       CAST(sum(quote_quantity) AS DOUBLE) / CAST(sum(quantity) AS DOUBLE) AS vwap
FROM trades
WHERE symbol = '{symbol}' AND day = {day}
GROUP BY symbol, day
