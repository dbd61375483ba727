-- A day's 1-second bars of one symbol, with Binance's kline fields; a second without trades has no bar.
SELECT open_time, open, high, low, close, volume, close_time, quote_asset_volume, number_of_trades,
       taker_buy_base_asset_volume, taker_buy_quote_asset_volume
FROM bars_1s
WHERE symbol = '{symbol}' AND day = {day}
ORDER BY open_time
