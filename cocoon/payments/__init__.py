"""Payments in TON: integer prices and the signed vouchers the channel contracts redeem."""
