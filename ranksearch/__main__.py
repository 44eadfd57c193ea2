from ranksearch.cli import main

main()
