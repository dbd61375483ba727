-- A day's trades of one symbol, in trade-id order.
SELECT trade_id, price, quantity, quote_quantity, trade_time, event_time, buyer_is_maker
FROM trades
WHERE symbol = '{symbol}' AND day = {day}
ORDER BY trade_id
