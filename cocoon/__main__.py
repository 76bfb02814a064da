from cocoon.cli import main

main()
