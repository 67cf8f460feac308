// console UI (to be written)
