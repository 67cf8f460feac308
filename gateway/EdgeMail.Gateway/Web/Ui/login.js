// login and setup (to be written)
