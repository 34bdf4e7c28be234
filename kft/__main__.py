from kft.cli import main

main()
