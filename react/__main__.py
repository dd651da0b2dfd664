from react.cli import main

main()
